//! The Khronos validation layer as a test: with `WGPU_VALIDATION=1` (wgpu's own switch) the
//! Vulkan instance loads the layer, and every error it reports becomes an error of the next
//! GPU call instead of a log line nobody reads.
//!
//! wgpu forwards the layer's messages through the `log` crate (target `wgpu_hal::vulkan::...`), so a
//! small logger collects the error-level ones here; [`take`] hands them to the device's error
//! check. A missing layer is an error too: a validation run without the layer would pass
//! without validating anything.

use std::sync::{Mutex, OnceLock};

/// wgpu's message when the layer was asked for and not found (logged at debug level).
const LAYER_MISSING: &str = "unable to find layer";

struct Collector;

fn errors() -> &'static Mutex<Vec<String>> {
    static ERRORS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    ERRORS.get_or_init(|| Mutex::new(Vec::new()))
}

impl log::Log for Collector {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        // Vulkan only: the GL backend's EGL errors (another adapter probed in the same
        // process) are not the layer's.
        meta.target().starts_with("wgpu_hal::vulkan")
            && (meta.level() <= log::Level::Error || meta.level() == log::Level::Debug)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let error = if record.level() == log::Level::Error {
            format!("Vulkan validation: {text}")
        } else if text.contains(LAYER_MISSING) {
            "WGPU_VALIDATION is set but the Khronos validation layer is not installed \
             (Debian: apt-get install vulkan-validationlayers)"
                .to_string()
        } else {
            return;
        };
        eprintln!("{error}");
        errors()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(error);
    }

    fn flush(&self) {}
}

/// Whether the environment asks for validation (`WGPU_VALIDATION=1`, read by wgpu).
pub(crate) fn requested(flags: wgpu::InstanceFlags) -> bool {
    flags.contains(wgpu::InstanceFlags::VALIDATION)
}

/// Installs the collector (once per process; a no-op if another logger is installed, whose
/// owner then sees the messages instead).
pub(crate) fn install() {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&Collector).is_ok();
        if ok {
            // Debug, for wgpu's "layer not found" message; the collector drops the rest.
            log::set_max_level(log::LevelFilter::Debug);
        }
        ok
    });
}

/// Takes (and clears) the validation errors collected so far.
pub(crate) fn take() -> Vec<String> {
    std::mem::take(&mut *errors().lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    fn record(level: log::Level, target: &str, text: &str) {
        Collector.log(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        );
    }

    #[test]
    fn layer_errors_and_a_missing_layer_are_collected() {
        take();
        record(
            log::Level::Error,
            "wgpu_hal::vulkan::instance",
            "VALIDATION [VUID-x] bad",
        );
        record(
            log::Level::Debug,
            "wgpu_hal::vulkan::instance",
            "InstanceFlags::VALIDATION requested, but unable to find layer: VK_LAYER_KHRONOS_validation",
        );
        // Not errors: a warning, another crate's error, an unrelated debug line.
        record(log::Level::Warn, "wgpu_hal::vulkan::instance", "slow path");
        record(log::Level::Error, "other_crate", "not ours");
        record(
            log::Level::Error,
            "wgpu_hal::gles::egl",
            "EGL 'eglInitialize' code 0x3001",
        );
        record(
            log::Level::Debug,
            "wgpu_hal::vulkan::adapter",
            "feature list",
        );
        let got = take();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("VUID-x"));
        assert!(got[1].contains("vulkan-validationlayers"));
        assert!(take().is_empty());
    }
}
