//! The capture `--out` writes: what the appliance would have sent back to GWLB, one Ethernet
//! frame per reply around the outer header the data plane would have put in front of it;
//! pcapng when the name ends in `.pcapng`, else pcap, with nanosecond timestamps. It must not
//! depend on the capture being read, the pipeline or the control plane.
//! Must not depend on: the pipeline, the control plane.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use etherparse::{EtherType, Ethernet2Header};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgWriter};
use pcap_file::{DataLink, PcapError, TsResolution};

use crate::wire::outer::OUTER_HEADER_LEN;

/// Ethernet addresses of replies written for captures that have none (locally administered).
const SYNTHETIC_APPLIANCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SYNTHETIC_GWLB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Where the replies go.
pub(super) struct Output {
    writer: Writer,
    /// The frame being written (Ethernet + outer headers + reply).
    frame: Vec<u8>,
}

enum Writer {
    Pcap(PcapWriter<BufWriter<File>>),
    PcapNg(PcapNgWriter<BufWriter<File>>),
}

/// Snap length of the written capture: the largest frame replay writes, with room to spare.
const OUT_SNAPLEN: u32 = 262_144;

impl Output {
    pub(super) fn create(path: &Path) -> anyhow::Result<Output> {
        let fail =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot write {}: {e}", path.display());
        let frame = Vec::with_capacity(Ethernet2Header::LEN + OUTER_HEADER_LEN + 9001);
        let file = BufWriter::new(File::create(path).map_err(|e| fail(&e))?);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pcapng")) {
            let mut writer = PcapNgWriter::new(file).map_err(|e| fail(&e))?;
            let interface = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: OUT_SNAPLEN,
                // Timestamps in nanoseconds, as the writer stores them.
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            };
            writer.write_block(&Block::InterfaceDescription(interface)).map_err(|e| fail(&e))?;
            Ok(Output { writer: Writer::PcapNg(writer), frame })
        } else {
            let header = PcapHeader {
                snaplen: OUT_SNAPLEN,
                datalink: DataLink::ETHERNET,
                ts_resolution: TsResolution::NanoSecond,
                endianness: pcap_file::Endianness::native(),
                ..PcapHeader::default()
            };
            let writer = PcapWriter::with_header(file, header).map_err(|e| fail(&e))?;
            Ok(Output { writer: Writer::Pcap(writer), frame })
        }
    }

    /// Writes one reply, sent at `timestamp_ns`: `outer` (its outer IPv4 + UDP header) and
    /// `reply` in an Ethernet frame back to where the frame it answers came from (`macs`: that
    /// frame's source and destination), or between the synthetic addresses where the capture
    /// has none.
    pub(super) fn write_reply(
        &mut self,
        timestamp_ns: u64,
        macs: Option<([u8; 6], [u8; 6])>,
        outer: &[u8],
        reply: &[u8],
    ) -> Result<(), PcapError> {
        let (gwlb_mac, appliance_mac) =
            macs.unwrap_or((SYNTHETIC_GWLB_MAC, SYNTHETIC_APPLIANCE_MAC));
        let ethernet = Ethernet2Header {
            destination: gwlb_mac,
            source: appliance_mac,
            ether_type: EtherType::IPV4,
        };
        let frame = &mut self.frame;
        frame.clear();
        frame.extend_from_slice(&ethernet.to_bytes());
        frame.extend_from_slice(outer);
        frame.extend_from_slice(reply);
        let frame = &self.frame[..];
        let timestamp = Duration::from_nanos(timestamp_ns);
        let len = frame.len() as u32;
        match &mut self.writer {
            Writer::Pcap(writer) => {
                writer.write_packet(&PcapPacket::new(timestamp, len, frame)).map(drop)
            }
            Writer::PcapNg(writer) => {
                let packet = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: len,
                    data: frame.into(),
                    options: Vec::new(),
                };
                writer.write_block(&Block::EnhancedPacket(packet)).map(drop)
            }
        }
    }

    pub(super) fn finish(self) -> std::io::Result<()> {
        match self.writer {
            Writer::Pcap(writer) => writer.into_writer().flush(),
            Writer::PcapNg(writer) => writer.into_inner().flush(),
        }
    }
}
