fn main() -> std::process::ExitCode {
    warren_master::main()
}
