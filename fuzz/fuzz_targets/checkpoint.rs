#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lafam_gpu::fuzzing::checkpoint(data);
});
