//! Generated code for the `argus.v1` protocol, plus the encoded file descriptor set that the
//! servers hand to gRPC reflection.

pub mod codec;

/// `argus.v1`: node agent <-> controller and the admin API.
// A command's result carries the checkpoint taken before a kill or restart inline: larger than
// the other messages of a stream, and sent once per command.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("argus.v1");
}

/// Encoded `FileDescriptorSet` of every argus proto file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/argus_descriptor.bin"));

/// Largest message either end of the node agent stream accepts: 16 MiB, so that a full snapshot
/// of a big node fits easily.
pub const MAX_AGENT_MESSAGE: usize = 16 << 20;

/// The probe interval a node agent uses unless configured, and the one a controller assumes when
/// `Hello.probe_interval_ms` is 0.
pub const DEFAULT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
