//! Every conformance case as a test, against the target in the environment
//! (`OPOF_TARGET`, `OPOF_ENDPOINT`, `OPOF_IMAGE`, ...; default: the embedded reference device).

fn main() -> std::process::ExitCode {
    opof_conformance::harness::main()
}
