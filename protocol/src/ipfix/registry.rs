//! IANA IPFIX Information Element registry (filled by the registry work).
