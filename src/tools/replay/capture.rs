//! Reading a capture file: pcap or pcapng, streamed record by record ([`Capture::for_each`]),
//! each [`Record`] with its time in nanoseconds, its link type and whether the file says the
//! host sent it. It knows the file formats, not what is in the frames: it must not depend on
//! the pipeline, the control plane, or anything of replay's but the link types of `link.rs`.
//!
//! pcap-file does the parsing. What is done here by hand, and why:
//! - the first four bytes pick the reader: pcap-file has no reader that detects the format,
//!   and an empty file or a text file gets a sentence of its own;
//! - pcap records are read raw ([`PcapReader::next_raw_packet`]): its `next_packet` refuses a
//!   record whose original length is over the snap length, which is every long packet of a
//!   capture taken with a short `-s`;
//! - pcapng interfaces are kept here: pcap-file keeps them too, but the block it returns
//!   borrows the reader, so they cannot be looked up while the packet is in hand; and it gives
//!   an enhanced packet's timestamp in the interface's units as if they were nanoseconds, so
//!   `if_tsresol` and `if_tsoffset` are applied here ([`Interface::timestamp_ns`]);
//! - a file cut in the middle of a record is told from a broken one by pcap-file's
//!   `UnexpectedEof` ([`read_error`]).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use anyhow::bail;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};

use super::link::LinkType;

/// One packet record of a capture.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    /// Nanoseconds since the Unix epoch, by the capture's clock.
    pub(super) timestamp_ns: u64,
    pub(super) link: LinkType,
    /// The capture says the host sent it (pcapng `epb_flags`).
    pub(super) outgoing: bool,
    pub(super) data: &'a [u8],
}

/// How reading a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Complete,
    /// The file ends in the middle of a record.
    Truncated,
}

/// A pcapng interface, as its description block defines it.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: DataLink,
    /// Timestamp units per second (`if_tsresol`, microseconds by default).
    units_per_second: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_s: u64,
}

impl Interface {
    fn new(block: &InterfaceDescriptionBlock<'_>) -> Interface {
        let mut interface =
            Interface { link: block.linktype, units_per_second: 1_000_000, offset_s: 0 };
        for option in &block.options {
            match *option {
                InterfaceDescriptionOption::IfTsResol(resolution) => {
                    let exponent = u32::from(resolution & 0x7f);
                    let units = if resolution & 0x80 == 0 {
                        10u64.checked_pow(exponent)
                    } else {
                        1u64.checked_shl(exponent)
                    };
                    interface.units_per_second = units.unwrap_or(1_000_000_000).max(1);
                }
                InterfaceDescriptionOption::IfTsOffset(offset) => interface.offset_s = offset,
                _ => {}
            }
        }
        interface
    }

    fn timestamp_ns(&self, units: u64) -> u64 {
        let ns = u128::from(units) * 1_000_000_000 / u128::from(self.units_per_second);
        let ns = ns + u128::from(self.offset_s) * 1_000_000_000;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

enum Reader {
    Pcap { reader: PcapReader<File>, link: LinkType, nanoseconds: bool },
    PcapNg { reader: PcapNgReader<File>, interfaces: Vec<Interface> },
}

/// A capture file being read.
pub(super) struct Capture {
    path: PathBuf,
    reader: Reader,
    /// `pcap` or `pcapng`.
    pub(super) format: &'static str,
    /// Packet records read so far.
    pub(super) records: u64,
    /// Link types of the interfaces that carried packets, in order of appearance.
    pub(super) link_types: Vec<LinkType>,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];

impl Capture {
    pub(super) fn open(path: &Path) -> anyhow::Result<Capture> {
        let shown = path.display();
        let cannot_read =
            |e: std::io::Error| anyhow::anyhow!("cannot read the capture {shown}: {e}");
        let mut magic = [0u8; 4];
        let mut file = File::open(path).map_err(cannot_read)?;
        let read = read_up_to(&mut file, &mut magic).map_err(cannot_read)?;
        if read == 0 {
            bail!("the capture {shown} is empty: it is not a pcap or pcapng file");
        }
        let file = File::open(path).map_err(cannot_read)?;
        let malformed = |e: PcapError| anyhow::anyhow!("{shown} is not a readable capture: {e}");
        let (reader, format, link_types) = if magic == PCAPNG_MAGIC {
            let reader = PcapNgReader::new(file).map_err(malformed)?;
            (Reader::PcapNg { reader, interfaces: Vec::new() }, "pcapng", Vec::new())
        } else if PCAP_MAGICS.contains(&magic) {
            let reader = PcapReader::new(file).map_err(malformed)?;
            let header = reader.header();
            let link = link_type(header.datalink, path)?;
            let nanoseconds = header.ts_resolution == TsResolution::NanoSecond;
            (Reader::Pcap { reader, link, nanoseconds }, "pcap", vec![link])
        } else {
            bail!(
                "{shown} is neither a pcap nor a pcapng file (it starts with {:02x?})",
                &magic[..read]
            );
        };
        Ok(Capture { path: path.to_path_buf(), reader, format, records: 0, link_types })
    }

    /// Hands every packet record to `handle`, in file order.
    pub(super) fn for_each(
        &mut self,
        mut handle: impl FnMut(Record<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<Ended> {
        let path = self.path.display().to_string();
        match &mut self.reader {
            Reader::Pcap { reader, link, nanoseconds } => {
                while let Some(next) = reader.next_raw_packet() {
                    let packet = match next {
                        Ok(packet) => packet,
                        Err(error) => return read_error(&path, self.records, error),
                    };
                    self.records += 1;
                    let fraction = u64::from(packet.ts_frac);
                    let fraction_ns = if *nanoseconds { fraction } else { fraction * 1000 };
                    let timestamp_ns = u64::from(packet.ts_sec) * 1_000_000_000 + fraction_ns;
                    handle(Record {
                        timestamp_ns,
                        link: *link,
                        outgoing: false,
                        data: &packet.data,
                    })?;
                }
            }
            Reader::PcapNg { reader, interfaces } => {
                let mut last_ns = 0;
                while let Some(next) = reader.next_block() {
                    let block = match next {
                        Ok(block) => block,
                        Err(error) => return read_error(&path, self.records, error),
                    };
                    let (interface_id, units, outgoing, data) = match &block {
                        Block::SectionHeader(_) => {
                            interfaces.clear();
                            continue;
                        }
                        Block::InterfaceDescription(description) => {
                            interfaces.push(Interface::new(description));
                            continue;
                        }
                        Block::EnhancedPacket(packet) => {
                            let units = packet.timestamp.as_nanos() as u64;
                            (packet.interface_id, Some(units), is_outbound(packet), &packet.data)
                        }
                        Block::Packet(packet) => (
                            u32::from(packet.interface_id),
                            Some(packet.timestamp),
                            false,
                            &packet.data,
                        ),
                        Block::SimplePacket(packet) => (0, None, false, &packet.data),
                        _ => continue,
                    };
                    self.records += 1;
                    let Some(interface) = interfaces.get(interface_id as usize) else {
                        bail!(
                            "{path} is not a readable capture: record {} names interface \
                             {interface_id}, which the file does not describe",
                            self.records
                        );
                    };
                    let link = link_type(interface.link, &self.path)?;
                    if !self.link_types.contains(&link) {
                        self.link_types.push(link);
                    }
                    // A simple packet block has no timestamp: it happened with the one before.
                    let timestamp_ns = units.map_or(last_ns, |u| interface.timestamp_ns(u));
                    last_ns = timestamp_ns;
                    handle(Record { timestamp_ns, link, outgoing, data })?;
                }
            }
        }
        Ok(Ended::Complete)
    }
}

/// `epb_flags` bits 0-1: 1 inbound, 2 outbound.
fn is_outbound(packet: &EnhancedPacketBlock<'_>) -> bool {
    packet.options.iter().any(|o| matches!(o, EnhancedPacketOption::Flags(f) if f & 0b11 == 2))
}

/// A cut-off last record ends the replay with a warning; anything else is an error.
fn read_error(path: &str, records: u64, error: PcapError) -> anyhow::Result<Ended> {
    match error {
        PcapError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Ended::Truncated),
        PcapError::IoError(e) => bail!("cannot read the capture {path}: {e}"),
        other => bail!("{path} is not a readable capture: after {records} records, {other}"),
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn link_type(datalink: DataLink, path: &Path) -> anyhow::Result<LinkType> {
    let number = u32::from(datalink);
    LinkType::from_number(number).ok_or_else(|| {
        anyhow::anyhow!(
            "{} has link type {datalink:?} ({number}), which replay does not read: capture on \
             the appliance's interface as Ethernet, Linux cooked (-i any) or raw IP",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution_and_offset() {
        let mut block = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535);
        assert_eq!(Interface::new(&block).timestamp_ns(1_500_000), 1_500_000_000, "default µs");
        block.options = vec![InterfaceDescriptionOption::IfTsResol(9)];
        assert_eq!(Interface::new(&block).timestamp_ns(1_500_000), 1_500_000);
        block.options = vec![
            InterfaceDescriptionOption::IfTsResol(0x80 | 10),
            InterfaceDescriptionOption::IfTsOffset(100),
        ];
        assert_eq!(Interface::new(&block).timestamp_ns(512), 100_500_000_000, "2^-10 s units");
    }
}
