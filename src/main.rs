fn main() -> std::process::ExitCode {
    lafam_gpu::cli::main()
}
