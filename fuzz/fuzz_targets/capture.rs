//! Any bytes as a capture file: the reader gives frames or a clear error, never a panic, and
//! never a frame longer than the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opof_traffic::capture::CaptureReader;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("opof-fuzz-capture-{}", std::process::id()));
    std::fs::write(&path, data).expect("temporary file");
    if let Ok(reader) = CaptureReader::open(&path) {
        for frame in reader.take(10_000) {
            match frame {
                Ok(f) => assert!(f.data.len() <= data.len()),
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    break;
                }
            }
        }
    }
});
