//! RSerPool wire formats: RFC 5354 parameters, ASAP (RFC 5352), ENRP (RFC 5353).
