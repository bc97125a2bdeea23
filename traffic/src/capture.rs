//! Reading and writing captures: classic pcap (microsecond or nanosecond) and pcapng, Ethernet
//! link type only, timestamps kept to the nanosecond.
//!
//! Bad files are errors that name the file and the byte offset of the record at fault: a wrong
//! magic, another link type, a truncated record, a record that claims more bytes than any frame
//! can have. Nothing is ever allocated from a length field read from the file: frames are read
//! through pcap-file's fixed-size buffer, and a length above [`MAX_FRAME`] is refused first.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapTsResolution, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::DataLink;

/// The largest frame a capture may hold (the largest snap length tools use).
pub const MAX_FRAME: usize = 262_144;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Nanoseconds since 1970-01-01T00:00:00Z.
    pub ts_ns: u64,
    /// The bytes captured, from the Ethernet header on.
    pub data: Vec<u8>,
    /// Length of the frame on the wire (≥ `data.len()` when the capture was cut short).
    pub orig_len: u32,
    /// The pcapng interface it was captured on (0 for classic pcap).
    pub interface: u32,
}

impl Frame {
    pub fn new(ts_ns: u64, data: Vec<u8>) -> Self {
        let orig_len = data.len() as u32;
        Frame { ts_ns, data, orig_len, interface: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

impl Format {
    /// From a file name: `.pcapng` is pcapng, anything else classic pcap.
    pub fn from_path(p: &Path) -> Format {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pcapng")) {
            Format::PcapNg
        } else {
            Format::Pcap
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a pcap or pcapng file (it starts with {magic})")]
    Magic { path: PathBuf, magic: String },
    #[error("{path}: link type {linktype} is not Ethernet (only Ethernet captures are supported)")]
    LinkType { path: PathBuf, linktype: String },
    #[error("{path}, offset {offset}: {what}")]
    Format { path: PathBuf, offset: u64, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io { path: path.to_path_buf(), source }
}

const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0xc3, 0xd4], [0x4d, 0x3c, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d]];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

enum Inner {
    Pcap(PcapReader<BufReader<File>>),
    Ng(PcapNgReader<BufReader<File>>),
}

/// Reads the frames of a pcap or pcapng file in order.
pub struct CaptureReader {
    path: PathBuf,
    inner: Inner,
    format: Format,
    /// Offset of the next record (classic pcap; pcapng asks its reader).
    offset: u64,
    little_endian: bool,
}

impl CaptureReader {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        let mut f = File::open(&path).map_err(io(&path))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut f, &mut magic).map_err(io(&path))?;
        if n < 4 {
            return Err(CaptureError::Format { path, offset: 0, what: format!("only {n} bytes: no capture header") });
        }
        f.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        // The buffer holds the largest record and its header; no length read from the file
        // sizes an allocation.
        let capacity = MAX_FRAME + 64;
        let reader = BufReader::new(f);
        let bad =
            |e: &dyn std::fmt::Display| CaptureError::Format { path: path.clone(), offset: 0, what: e.to_string() };
        if PCAP_MAGICS.contains(&magic) {
            let r = PcapReader::with_capacity(reader, capacity).map_err(|e| bad(&e))?;
            let h = r.header();
            if h.datalink != DataLink::ETHERNET {
                return Err(CaptureError::LinkType { path, linktype: format!("{:?}", h.datalink) });
            }
            let little_endian = magic[0] == 0xd4 || magic[0] == 0x4d;
            Ok(CaptureReader { path, inner: Inner::Pcap(r), format: Format::Pcap, offset: 24, little_endian })
        } else if magic == PCAPNG_MAGIC {
            let r = PcapNgReader::with_capacity(reader, capacity).map_err(|e| bad(&e))?;
            Ok(CaptureReader { path, inner: Inner::Ng(r), format: Format::PcapNg, offset: 0, little_endian: true })
        } else {
            let magic = magic.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
            Err(CaptureError::Magic { path, magic })
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        match &mut self.inner {
            Inner::Pcap(r) => {
                let at = self.offset;
                match r.next_packet()? {
                    Ok(p) => {
                        self.offset += 16 + p.data().len() as u64;
                        let (ts_ns, orig_len) = (p.timestamp().as_nanos() as u64, p.orig_len());
                        Some(Ok(Frame { ts_ns, orig_len, data: p.into_data().into_owned(), interface: 0 }))
                    }
                    Err(e) => Some(Err(self.pcap_error(at, &e))),
                }
            }
            Inner::Ng(r) => loop {
                let at = r.bytes_parsed();
                let block = match r.next_block()? {
                    Ok((b, _)) => b,
                    Err(e) => return Some(Err(self.ng_error(at, &e))),
                };
                match block {
                    Block::EnhancedPacket(p) => {
                        return Some(Ok(Frame {
                            ts_ns: p.timestamp.as_nanos() as u64,
                            orig_len: p.original_len,
                            data: p.data.into_owned(),
                            interface: p.interface_id,
                        }))
                    }
                    Block::SimplePacket(p) => {
                        return Some(Ok(Frame {
                            ts_ns: 0,
                            orig_len: p.original_len,
                            data: p.data.into_owned(),
                            interface: 0,
                        }))
                    }
                    Block::InterfaceDescription(i) if i.linktype != DataLink::ETHERNET => {
                        return Some(Err(CaptureError::LinkType {
                            path: self.path.clone(),
                            linktype: format!("{:?}", i.linktype),
                        }))
                    }
                    _ => continue,
                }
            },
        }
    }

    /// Explains a classic pcap record that could not be read, from its header as it is on disk.
    fn pcap_error(&mut self, at: u64, e: &dyn std::fmt::Display) -> CaptureError {
        let format = |what: String| CaptureError::Format { path: self.path.clone(), offset: at, what };
        let Ok(mut f) = File::open(&self.path) else { return format(e.to_string()) };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut h = [0u8; 16];
        if f.seek(SeekFrom::Start(at)).is_err() || read_up_to(&mut f, &mut h).unwrap_or(0) < 16 {
            return format(format!("truncated record header ({} of 16 bytes)", size.saturating_sub(at).min(16)));
        }
        let incl = if self.little_endian {
            u32::from_le_bytes([h[8], h[9], h[10], h[11]])
        } else {
            u32::from_be_bytes([h[8], h[9], h[10], h[11]])
        };
        if incl as usize > MAX_FRAME {
            format(format!("record claims {incl} bytes, more than any frame ({MAX_FRAME})"))
        } else if at + 16 + u64::from(incl) > size {
            format(format!("truncated record: {incl} bytes claimed, {} in the file", size.saturating_sub(at + 16)))
        } else {
            format(e.to_string())
        }
    }

    fn ng_error(&self, at: u64, e: &pcap_file::pcapng::PcapNgReadError) -> CaptureError {
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let what = match e {
            pcap_file::pcapng::PcapNgReadError::Io(x) if x.kind() == std::io::ErrorKind::UnexpectedEof => {
                let mut len = [0u8; 4];
                let claimed = File::open(&self.path)
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(at + 4))?;
                        f.read_exact(&mut len)
                    })
                    .map(|_| u32::from_le_bytes(len));
                match claimed {
                    Ok(n) if n as usize > MAX_FRAME + 64 => {
                        format!("block claims {n} bytes, more than any frame ({MAX_FRAME}) and its block")
                    }
                    Ok(n) => format!("truncated block: {n} bytes claimed, {} in the file", size.saturating_sub(at)),
                    Err(_) => "truncated block header".to_string(),
                }
            }
            other => error_chain(other),
        };
        CaptureError::Format { path: self.path.clone(), offset: at, what }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Iterator for CaptureReader {
    type Item = Result<Frame, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

/// Reads a whole capture.
pub fn read_all(path: impl AsRef<Path>) -> Result<Vec<Frame>, CaptureError> {
    CaptureReader::open(path)?.collect()
}

enum WInner {
    Pcap(PcapWriter<BufWriter<File>>),
    Ng(PcapNgWriter<BufWriter<File>>),
}

/// Writes frames to a pcap (nanosecond) or pcapng file; pcapng gets one interface per name.
pub struct CaptureWriter {
    path: PathBuf,
    inner: WInner,
    interfaces: u32,
}

impl CaptureWriter {
    /// A capture at `path`, in the format its extension names (`.pcapng`, else pcap).
    pub fn create(path: impl AsRef<Path>, interfaces: &[&str]) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        Self::create_as(&path, Format::from_path(&path), interfaces)
    }

    pub fn create_as(path: &Path, format: Format, interfaces: &[&str]) -> Result<Self, CaptureError> {
        let w = BufWriter::new(File::create(path).map_err(io(path))?);
        let bad = |e: &dyn std::fmt::Display| CaptureError::Format {
            path: path.to_path_buf(),
            offset: 0,
            what: e.to_string(),
        };
        let inner = match format {
            Format::Pcap => {
                let header = PcapHeader {
                    snaplen: MAX_FRAME as u32,
                    datalink: DataLink::ETHERNET,
                    ts_resolution: PcapTsResolution::NanoSecond,
                    ..PcapHeader::default()
                };
                WInner::Pcap(PcapWriter::with_header(w, header).map_err(|e| bad(&e))?)
            }
            Format::PcapNg => {
                let mut ng = PcapNgWriter::new(w).map_err(|e| bad(&e))?;
                let names: Vec<&str> = if interfaces.is_empty() { vec!["opof"] } else { interfaces.to_vec() };
                for name in names {
                    let idb = InterfaceDescriptionBlock {
                        linktype: DataLink::ETHERNET,
                        snaplen: MAX_FRAME as u32,
                        options: vec![
                            InterfaceDescriptionOption::IfName(name.to_string().into()),
                            InterfaceDescriptionOption::IfTsResol(InterfaceTsResolution::NANO),
                        ],
                    };
                    ng.write_pcapng_block(idb).map_err(|e| bad(&e))?;
                }
                WInner::Ng(ng)
            }
        };
        Ok(CaptureWriter { path: path.to_path_buf(), inner, interfaces: interfaces.len().max(1) as u32 })
    }

    pub fn write(&mut self, f: &Frame) -> Result<(), CaptureError> {
        self.write_with(f, None)
    }

    /// Writes a frame with its direction as seen by the interface it was captured on (pcapng
    /// `epb_flags`: inbound or outbound; classic pcap has no place for it).
    pub fn write_directed(&mut self, f: &Frame, inbound: bool) -> Result<(), CaptureError> {
        self.write_with(f, Some(if inbound { 1 } else { 2 }))
    }

    fn write_with(&mut self, f: &Frame, flags: Option<u32>) -> Result<(), CaptureError> {
        let ts = Duration::from_nanos(f.ts_ns);
        let bad = |e: &dyn std::fmt::Display| CaptureError::Format {
            path: self.path.clone(),
            offset: 0,
            what: e.to_string(),
        };
        if f.data.len() > MAX_FRAME {
            return Err(bad(&format!("a frame of {} bytes is more than {MAX_FRAME}", f.data.len())));
        }
        match &mut self.inner {
            WInner::Pcap(w) => {
                let p =
                    PcapPacket::new(ts, f.orig_len.max(f.data.len() as u32), f.data.as_slice()).map_err(|e| bad(&e))?;
                w.write_packet(&p).map_err(|e| bad(&e))?;
            }
            WInner::Ng(w) => {
                if f.interface >= self.interfaces {
                    return Err(bad(&format!("interface {} was not declared", f.interface)));
                }
                let epb = EnhancedPacketBlock {
                    interface_id: f.interface,
                    timestamp: ts,
                    original_len: f.orig_len.max(f.data.len() as u32),
                    data: f.data.as_slice().into(),
                    options: flags.map(EnhancedPacketOption::Flags).into_iter().collect(),
                };
                w.write_pcapng_block(epb).map_err(|e| bad(&e))?;
            }
        }
        Ok(())
    }

    /// Flushes and closes the file.
    pub fn finish(self) -> Result<(), CaptureError> {
        let path = self.path;
        let mut w = match self.inner {
            WInner::Pcap(w) => w.into_inner(),
            WInner::Ng(w) => w.into_inner(),
        };
        w.flush().map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(bytes: &[u8]) -> Result<Vec<Frame>, CaptureError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.cap");
        std::fs::write(&p, bytes).unwrap();
        CaptureReader::open(&p)?.collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Any bytes behind a valid pcap or pcapng magic (or none) give frames or an error,
        /// never a panic or a hang.
        #[test]
        fn any_bytes_are_read_or_refused(magic in 0usize..6, body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = match magic {
                0 => vec![0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0],
                1 => vec![0xd4, 0xc3, 0xb2, 0xa1],
                2 => vec![0x0a, 0x0d, 0x0d, 0x0a],
                3 => vec![0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 28, 0, 0, 0],
                4 => vec![0xa1, 0xb2, 0xc3, 0xd4],
                _ => vec![],
            };
            bytes.extend(body);
            let _ = read(&bytes);
        }
    }
}
