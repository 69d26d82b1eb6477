//! Generated code for the `argus.v1` protocol, plus the encoded file descriptor set that the
//! servers hand to gRPC reflection.

/// `argus.v1`: node agent <-> controller and the admin API.
pub mod v1 {
    tonic::include_proto!("argus.v1");
}

/// Encoded `FileDescriptorSet` of every argus proto file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/argus_descriptor.bin"));
