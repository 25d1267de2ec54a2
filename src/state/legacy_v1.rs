//! Reads state files of format 3, the last written with bincode 1 (balctl
//! up to commit a86b197), so that an upgrade keeps what was applied: the
//! first balctl that takes the state lock rewrites such a file in the
//! current format (`StateDir::lock`). Only that migration uses it.
//!
//! Delete this module, and `LEGACY_VERSION`, once no node can still hold a
//! format 3 file: when every release an upgrade may start from writes
//! format 4 or later (the release after the first one that writes it).
//!
//! bincode 1 is unmaintained (RUSTSEC-2025-0141) and is not kept for this.
//! Its default encoding (`bincode::serialize`) is small and fixed, and
//! this reader decodes exactly the part of it that `AppliedState` uses:
//!
//! - integers: fixed width, little endian (`u8` 1 byte ... `u128` 16);
//! - `bool`: one byte, 0 or 1; `Option`: a byte 0 (None) or 1 then the value;
//! - strings and sequences: a `u64` length, then UTF-8 bytes or the elements;
//! - structs and tuples: their fields in order, nothing else;
//! - enums: the variant's index as a `u32`, then its fields.
//!
//! Nothing says what a value is (it is not self-describing), so what to
//! read next comes from the types, as with bincode.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor,
    value::U32Deserializer,
};

/// Fields of the state's types that format 3 did not have, as (struct,
/// field): each is the last of its struct (later fields would be added
/// after it) and `#[serde(default)]`, which is what a migrated file gets.
pub const ADDED_AFTER_FORMAT_3: &[(&str, &str)] =
    &[("Record", "address_kind"), ("FrontendImage", "address_kind")];

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

/// The value `bytes` (a format 3 body, after the header) hold, all of them.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut reader = Reader { bytes };
    let value = T::deserialize(&mut reader)?;
    if !reader.bytes.is_empty() {
        return Err(Error::Invalid(format!("{} bytes follow the end of its data", reader.bytes.len())));
    }
    Ok(value)
}

struct Reader<'de> {
    /// What is left to read.
    bytes: &'de [u8],
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

    /// A length (`u64`); a count of elements may be anything, so it is
    /// never used to reserve memory here (serde's collections cap what they
    /// reserve from it).
    fn length(&mut self) -> Result<usize, Error> {
        let length = u64::from_le_bytes(self.take()?);
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
        let index = u32::from_le_bytes(self.take()?);
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
        Err(Error::Invalid("a value of a type state format 3 never held".to_owned()))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(self.flag("bool")?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u16(u16::from_le_bytes(self.take()?))
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(u32::from_le_bytes(self.take()?))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(u64::from_le_bytes(self.take()?))
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u128(u128::from_le_bytes(self.take()?))
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

    /// A struct's fields up to the first one format 3 did not have: the
    /// struct's `#[serde(default)]` gives the rest.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let in_format_3 = fields
            .iter()
            .position(|field| ADDED_AFTER_FORMAT_3.contains(&(name, *field)))
            .unwrap_or(fields.len());
        self.deserialize_tuple(in_format_3, visitor)
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
