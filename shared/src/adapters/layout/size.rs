//! An item's size as DynamoDB counts it, computed while serializing: the same
//! mapping `serde_dynamo` makes (strings `S`, numbers `N`, `None` and unit
//! `NULL`, sequences `L`, structs and maps `M`, enum variants as `S` or a
//! one-entry `M`), without building the attribute values. The memory backend
//! sizes every write; building the `AttributeValue` tree to measure it took
//! about a fifth of the in-process pipeline's time.
//!
//! Sets are not sized here: no item type holds one (the fan-in's set is
//! added by `done_calls_size`).

use serde::ser::{self, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("cannot size the item: {0}")]
pub struct SizeError(String);

impl ser::Error for SizeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SizeError(msg.to_string())
    }
}

/// The size of an item (a struct or map at the top): each attribute's name
/// plus its value.
pub fn item_size<T: Serialize + ?Sized>(item: &T) -> Result<usize, SizeError> {
    match item.serialize(Sizer)? {
        // A map's size is its entries' plus three bytes; an item has no such overhead.
        Measured::Map(size) => Ok(size - MAP_OVERHEAD),
        Measured::Value(_) => Err(SizeError("an item must be a struct or a map".into())),
    }
}

/// A map's or list's own bytes, besides its elements.
const MAP_OVERHEAD: usize = 3;
const LIST_OVERHEAD: usize = 3;
/// Each list element's extra byte.
const LIST_ELEMENT: usize = 1;

/// What a value serialized to: a map (an item may only be one) or another value.
enum Measured {
    Map(usize),
    Value(usize),
}

impl Measured {
    fn bytes(&self) -> usize {
        match self {
            Measured::Map(n) | Measured::Value(n) => *n,
        }
    }
}

/// A number's size: about one byte per two significant digits, plus one.
pub(super) fn number_size(text: &str) -> usize {
    let digits = text.bytes().filter(u8::is_ascii_digit);
    let mut leading = true;
    let (mut significant, mut trailing_zeros) = (0usize, 0usize);
    for d in digits {
        if leading && d == b'0' {
            continue;
        }
        leading = false;
        significant += 1;
        trailing_zeros = if d == b'0' { trailing_zeros + 1 } else { 0 };
    }
    (significant - trailing_zeros).div_ceil(2) + 1
}

fn integer_size(mut n: u128) -> usize {
    // Significant digits: all but the leading and trailing zeros.
    if n == 0 {
        return 1;
    }
    while n.is_multiple_of(10) {
        n /= 10;
    }
    let mut digits = 0usize;
    while n > 0 {
        digits += 1;
        n /= 10;
    }
    digits.div_ceil(2) + 1
}

struct Sizer;

struct Compound {
    total: usize,
    list: bool,
    /// A variant wraps the compound in a one-entry map: its name's bytes and
    /// the map's overhead.
    wrapper: usize,
    pending_key: usize,
}

impl Compound {
    fn map() -> Self {
        Compound {
            total: MAP_OVERHEAD,
            list: false,
            wrapper: 0,
            pending_key: 0,
        }
    }

    fn list() -> Self {
        Compound {
            total: LIST_OVERHEAD,
            list: true,
            wrapper: 0,
            pending_key: 0,
        }
    }

    fn in_variant(mut self, variant: &str) -> Self {
        self.wrapper = MAP_OVERHEAD + variant.len();
        self
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.total += LIST_ELEMENT + value.serialize(Sizer)?.bytes();
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), SizeError> {
        self.total += key.len() + value.serialize(Sizer)?.bytes();
        Ok(())
    }

    fn done(self) -> Measured {
        match (self.list, self.wrapper) {
            (false, 0) => Measured::Map(self.total),
            (_, wrapper) => Measured::Value(self.total + wrapper),
        }
    }
}

impl ser::Serializer for Sizer {
    type Ok = Measured;
    type Error = SizeError;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = Compound;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    fn serialize_bool(self, _: bool) -> Result<Measured, SizeError> {
        Ok(Measured::Value(1))
    }
    fn serialize_i8(self, v: i8) -> Result<Measured, SizeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Measured, SizeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Measured, SizeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Measured, SizeError> {
        Ok(Measured::Value(integer_size(v.unsigned_abs().into())))
    }
    fn serialize_u8(self, v: u8) -> Result<Measured, SizeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Measured, SizeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Measured, SizeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Measured, SizeError> {
        Ok(Measured::Value(integer_size(v.into())))
    }
    fn serialize_f32(self, v: f32) -> Result<Measured, SizeError> {
        Ok(Measured::Value(number_size(&v.to_string())))
    }
    fn serialize_f64(self, v: f64) -> Result<Measured, SizeError> {
        Ok(Measured::Value(number_size(&v.to_string())))
    }
    fn serialize_char(self, v: char) -> Result<Measured, SizeError> {
        Ok(Measured::Value(v.len_utf8()))
    }
    fn serialize_str(self, v: &str) -> Result<Measured, SizeError> {
        Ok(Measured::Value(v.len()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Measured, SizeError> {
        Ok(Measured::Value(v.len()))
    }
    fn serialize_none(self) -> Result<Measured, SizeError> {
        Ok(Measured::Value(1))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Measured, SizeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Measured, SizeError> {
        Ok(Measured::Value(1))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Measured, SizeError> {
        Ok(Measured::Value(1))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Measured, SizeError> {
        Ok(Measured::Value(variant.len()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Measured, SizeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Measured, SizeError> {
        let inner = value.serialize(Sizer)?.bytes();
        Ok(Measured::Value(MAP_OVERHEAD + variant.len() + inner))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound, SizeError> {
        Ok(Compound::list())
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound, SizeError> {
        Ok(Compound::list())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound, SizeError> {
        Ok(Compound::list())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, SizeError> {
        Ok(Compound::list().in_variant(variant))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound, SizeError> {
        Ok(Compound::map())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound, SizeError> {
        Ok(Compound::map())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, SizeError> {
        Ok(Compound::map().in_variant(variant))
    }
}

impl ser::SerializeSeq for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.element(value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeTuple for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.element(value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeTupleStruct for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.element(value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeTupleVariant for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.element(value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeMap for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), SizeError> {
        self.pending_key = key.serialize(KeySizer)?;
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        self.total += self.pending_key + value.serialize(Sizer)?.bytes();
        Ok(())
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeStruct for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SizeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

impl ser::SerializeStructVariant for Compound {
    type Ok = Measured;
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SizeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Measured, SizeError> {
        Ok(self.done())
    }
}

/// A map key's bytes: strings, and integers as their decimal text, as
/// `serde_dynamo` writes them.
struct KeySizer;

fn key_error() -> SizeError {
    SizeError("a map key must be a string or an integer".into())
}

impl ser::Serializer for KeySizer {
    type Ok = usize;
    type Error = SizeError;
    type SerializeSeq = ser::Impossible<usize, SizeError>;
    type SerializeTuple = ser::Impossible<usize, SizeError>;
    type SerializeTupleStruct = ser::Impossible<usize, SizeError>;
    type SerializeTupleVariant = ser::Impossible<usize, SizeError>;
    type SerializeMap = ser::Impossible<usize, SizeError>;
    type SerializeStruct = ser::Impossible<usize, SizeError>;
    type SerializeStructVariant = ser::Impossible<usize, SizeError>;

    fn serialize_str(self, v: &str) -> Result<usize, SizeError> {
        Ok(v.len())
    }
    fn serialize_char(self, v: char) -> Result<usize, SizeError> {
        Ok(v.len_utf8())
    }
    fn serialize_i8(self, v: i8) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_i16(self, v: i16) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_i32(self, v: i32) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_i64(self, v: i64) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_u8(self, v: u8) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_u16(self, v: u16) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_u32(self, v: u32) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_u64(self, v: u64) -> Result<usize, SizeError> {
        Ok(v.to_string().len())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<usize, SizeError> {
        value.serialize(self)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<usize, SizeError> {
        Ok(variant.len())
    }
    fn serialize_bool(self, _: bool) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_f32(self, _: f32) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_f64(self, _: f64) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<usize, SizeError> {
        Err(key_error())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SizeError> {
        Err(key_error())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SizeError> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SizeError> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SizeError> {
        Err(key_error())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SizeError> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SizeError> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SizeError> {
        Err(key_error())
    }
}
