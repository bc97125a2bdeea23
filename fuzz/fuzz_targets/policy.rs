//! Any text as the VNF's policy file: a policy or an error message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = opof_vnf::policy::Policy::parse(text) {
            assert!(!e.is_empty());
        }
    }
});
