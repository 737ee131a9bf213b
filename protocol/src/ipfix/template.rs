//! Templates and Field Specifiers (RFC 7011 sections 3.2 and 3.4.1).

/// Field length value that marks a variable-length Information Element
/// (RFC 7011 section 7).
pub const VARIABLE_LENGTH: u16 = 65535;

/// Enterprise number 0 stands for IANA-registered Information Elements.
pub const IANA_ENTERPRISE: u32 = 0;

/// One Field Specifier of a template: which Information Element and how many
/// bytes it takes in each Data Record ([`VARIABLE_LENGTH`] if variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldSpecifier {
    /// Private Enterprise Number, [`IANA_ENTERPRISE`] for IANA elements.
    pub enterprise: u32,
    /// Information Element identifier, without the enterprise bit.
    pub id: u16,
    /// Field length in bytes, or [`VARIABLE_LENGTH`].
    pub length: u16,
}

impl FieldSpecifier {
    /// An IANA Information Element of fixed length.
    pub const fn iana(id: u16, length: u16) -> Self {
        Self {
            enterprise: IANA_ENTERPRISE,
            id,
            length,
        }
    }

    /// An enterprise-specific Information Element.
    pub const fn enterprise(enterprise: u32, id: u16, length: u16) -> Self {
        Self {
            enterprise,
            id,
            length,
        }
    }

    /// Whether the element is variable-length (length 65535, RFC 7011
    /// §7): each record then carries a 1- or 3-byte length prefix before
    /// the value.
    pub const fn is_variable(&self) -> bool {
        self.length == VARIABLE_LENGTH
    }

    /// Bytes this specifier occupies inside a Template Record.
    pub const fn encoded_len(&self) -> usize {
        if self.enterprise == IANA_ENTERPRISE {
            4
        } else {
            8
        }
    }
}

/// A (Options) Template: the layout of the Data Records of one Set ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Template ID, at least 256.
    pub id: u16,
    /// Number of scope fields; 0 for an ordinary (non-options) Template.
    pub scope_field_count: u16,
    /// Field Specifiers in record order; in an Options Template the first
    /// `scope_field_count` are the scope fields (RFC 7011 §3.4.2.2).
    pub fields: Vec<FieldSpecifier>,
    /// Length of every record if no field is variable-length.
    fixed_record_len: Option<usize>,
    /// Smallest possible record: fixed fields plus one length byte per
    /// variable field. Used to tell a record from set padding.
    min_record_len: usize,
}

impl Template {
    /// A template with its record lengths computed once. Nothing is
    /// checked here: the decoder checks the ID (256 or above) and the scope
    /// count before it builds one; a caller building its own is trusted.
    pub fn new(id: u16, scope_field_count: u16, fields: Vec<FieldSpecifier>) -> Self {
        let mut fixed = 0usize;
        let mut variable = false;
        let mut min = 0usize;
        for field in &fields {
            if field.is_variable() {
                variable = true;
                min += 1;
            } else {
                fixed += field.length as usize;
                min += field.length as usize;
            }
        }
        Self {
            id,
            scope_field_count,
            fields,
            fixed_record_len: (!variable).then_some(fixed),
            min_record_len: min,
        }
    }

    /// Whether this is an Options Template (scope field count above 0,
    /// RFC 7011 §3.4.2.2), sent in an Options Template Set (Set ID 3).
    pub fn is_options(&self) -> bool {
        self.scope_field_count > 0
    }

    /// Bytes of every Data Record when no field is variable-length;
    /// `None` when records differ in length.
    pub fn fixed_record_len(&self) -> Option<usize> {
        self.fixed_record_len
    }

    /// Bytes of the shortest possible Data Record: fixed fields plus one
    /// length byte per variable-length field. Fewer bytes left at the end
    /// of a Data Set are padding (RFC 7011 §3.3.1).
    pub fn min_record_len(&self) -> usize {
        self.min_record_len
    }
}
