//! ASAP client side (RFC 5352): the pool element and pool user.
