fn main() -> std::process::ExitCode {
    // Before any thread exists: setting the environment is only sound here.
    lafam_gpu::gpu::quiet_headless_vulkan();
    lafam_gpu::cli::main()
}
