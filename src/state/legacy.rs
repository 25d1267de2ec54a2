//! Reads state files of the formats before the current one, so that an
//! upgrade keeps what was applied: the first balctl that takes the state
//! lock rewrites such a file in the current format (`StateDir::lock`).
//! Only that migration uses it.
//!
//! - Format 3, the last written with bincode 1 (balctl up to commit
//!   a86b197). Delete its support once no node can still hold such a
//!   file: when every release an upgrade may start from writes format 4
//!   or later.
//! - Format 4, postcard, without the fields north-south added (which
//!   backends are local).
//! - Format 5, postcard, without Services' health-check node ports.
//! - Format 6, postcard, without what translations read (`SyncedObject::reads`).
//! - Formats 7 to 10, postcard, without the fields `ADDED` lists after them
//!   (9's and 10's snapshots start with a generation, and their logs'
//!   records are read here too: `change_log::read`).
//!
//! bincode 1 is unmaintained (RUSTSEC-2025-0141) and is not kept for this;
//! postcard reads only its own current layout. Both encodings are small
//! and fixed, and this reader decodes exactly the part of them that
//! `AppliedState` uses:
//!
//! - `u8`: one byte. Wider integers: in format 3 fixed width, little
//!   endian (`u16` 2 bytes ... `u128` 16); in format 4 postcard's varint
//!   (LEB128: 7 bits a byte, least significant first, the high bit set on
//!   all bytes but the last);
//! - `bool`: one byte, 0 or 1; `Option`: a byte 0 (None) or 1 then the value;
//! - strings and sequences: a length (a `u64`, or a varint in format 4),
//!   then UTF-8 bytes or the elements;
//! - structs and tuples: their fields in order, nothing else;
//! - enums: the variant's index as a `u32` (a varint in format 4), then
//!   its fields.
//!
//! Nothing says what a value is (neither is self-describing), so what to
//! read next comes from the types, as with bincode and postcard.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor,
    value::U32Deserializer,
};

/// Fields of the state's types that older formats did not have, as (the
/// first format with it, struct, field): each comes after every field of
/// its struct that older formats had (later fields are added after it)
/// and is `#[serde(default)]`, which is what a migrated file gets.
pub const ADDED: &[(u32, &str, &str)] = &[
    (4, "Record", "address_kind"),
    (4, "FrontendImage", "address_kind"),
    (5, "Record", "local_backends"),
    (5, "BackendAddr", "local"),
    (5, "Record", "external"),
    (5, "FrontendImage", "maglev_table_size"),
    (5, "FrontendImage", "source_ranges"),
    (6, "SyncedObject", "health_check"),
    (7, "SyncedObject", "dependencies"),
    (7, "SyncedObject", "held_back"),
    (8, "Image", "node_ports_on_loopback"),
    (10, "FrontendImage", "cell"),
    (10, "FrontendImage", "hit_cells"),
    (11, "Record", "health"),
    (11, "Record", "weights"),
    (11, "Record", "least_connections"),
    (11, "FrontendImage", "unhealthy"),
    (11, "FrontendImage", "least_connections"),
];

/// The formats this reader reads.
pub const FORMATS: [u32; 8] = [3, 4, 5, 6, 7, 8, 9, 10];

/// Why a format 3 file cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// It ends in the middle of a value.
    Truncated,
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("it ends in the middle of its data (truncated)"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Invalid(msg.to_string())
    }
}

/// The value `bytes` (the body of a file of `format`, one of `FORMATS`,
/// after the header) hold, all of them.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8], format: u32) -> Result<T, Error> {
    debug_assert!(FORMATS.contains(&format));
    let mut reader = Reader { bytes, format };
    let value = T::deserialize(&mut reader)?;
    if !reader.bytes.is_empty() {
        return Err(Error::Invalid(format!("{} bytes follow the end of its data", reader.bytes.len())));
    }
    Ok(value)
}

struct Reader<'de> {
    /// What is left to read.
    bytes: &'de [u8],
    format: u32,
}

impl<'de> Reader<'de> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(Error::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take::<1>()?[0])
    }

    /// Whether integers wider than a byte are varints (postcard).
    fn varints(&self) -> bool {
        self.format >= 4
    }

    /// An unsigned integer of at most `bits` bits: `N` bytes little endian
    /// in format 3, a varint after.
    fn integer<const N: usize>(&mut self, bits: u32) -> Result<u128, Error> {
        if !self.varints() {
            let mut wide = [0u8; 16];
            wide[..N].copy_from_slice(&self.take::<N>()?);
            return Ok(u128::from_le_bytes(wide));
        }
        let mut value = 0u128;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            let part = u128::from(byte & 0x7f);
            if shift >= bits || part >> (bits - shift).min(7) != 0 {
                return Err(Error::Invalid(format!("a varint does not fit in {bits} bits")));
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// A length (a `u64`); a count of elements may be anything, so it is
    /// never used to reserve memory here (serde's collections cap what they
    /// reserve from it).
    fn length(&mut self) -> Result<usize, Error> {
        let length = self.integer::<8>(64)?;
        usize::try_from(length).map_err(|_| Error::Truncated)
    }

    /// A 0 or 1 byte: a `bool`, or whether an `Option` holds a value.
    fn flag(&mut self, what: &str) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::Invalid(format!("{other} is not a valid {what}"))),
        }
    }
}

/// The elements of a sequence or the fields of a tuple or struct.
struct Elements<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> EnumAccess<'de> for &mut Reader<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = self.integer::<4>(32)? as u32;
        let variant = seed.deserialize(U32Deserializer::<Error>::new(index))?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Reader<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    /// The format does not say what comes next: only types that state
    /// files never held would ask.
    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::Invalid(format!("a value of a type state format {} never held", self.format)))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(self.flag("bool")?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte()?)
    }

    // `integer` checks the width, so the casts keep every bit.
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u16(self.integer::<2>(16)? as u16)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(self.integer::<4>(32)? as u32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(self.integer::<8>(64)? as u64)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u128(self.integer::<16>(128)?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let length = self.length()?;
        let Some((text, rest)) = self.bytes.split_at_checked(length) else { return Err(Error::Truncated) };
        self.bytes = rest;
        let text =
            std::str::from_utf8(text).map_err(|_| Error::Invalid("a string is not UTF-8".to_owned()))?;
        visitor.visit_borrowed_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.flag("Option tag")? { visitor.visit_some(self) } else { visitor.visit_none() }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let left = self.length()?;
        visitor.visit_seq(Elements { reader: self, left })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements { reader: self, left: len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    /// A struct's fields up to the first one its format did not have: the
    /// struct's `#[serde(default)]` gives the rest.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let format = self.format;
        let in_format = fields
            .iter()
            .position(|field| {
                ADDED.iter().any(|&added| added.0 > format && (added.1, added.2) == (name, *field))
            })
            .unwrap_or(fields.len());
        self.deserialize_tuple(in_format, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    /// Addresses are written as bytes, not text.
    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 f32 f64 char bytes byte_buf unit unit_struct map identifier ignored_any
    }
}
