//! Components chosen by a `type:` key, without losing error positions.
//!
//! serde's internally tagged enums buffer the whole map before choosing the variant, and errors
//! found in the buffer lose their line, column and field path. Here `type` must be the first key
//! of the map; the rest of the same map is then read directly by the chosen variant's struct, so
//! `deny_unknown_fields`, positions and paths all survive.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

/// A component kind family (receivers, sinks, …) selected by `type:`.
pub trait Tagged: Sized {
    /// What the family is called in messages, e.g. `sink`.
    const FAMILY: &'static str;
    /// Every valid `type` value.
    const KINDS: &'static [&'static str];

    /// Reads the rest of the map as the settings of `kind`.
    ///
    /// # Errors
    ///
    /// An unknown kind, or an error in the settings.
    fn from_rest<'de, A: MapAccess<'de>>(kind: &str, rest: A) -> Result<Self, A::Error>;
}

/// Deserializes a [`Tagged`] family; use in its `Deserialize` impl.
///
/// # Errors
///
/// When the value is not a map, `type` is missing or not first, or the settings are invalid.
pub fn deserialize<'de, D: Deserializer<'de>, T: Tagged>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(TaggedVisitor(PhantomData))
}

/// Reads the settings of one kind from the rest of the map.
///
/// # Errors
///
/// The settings' own errors.
pub fn settings<'de, A: MapAccess<'de>, S: Deserialize<'de>>(rest: A) -> Result<S, A::Error> {
    S::deserialize(MapAccessDeserializer::new(rest))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} with `type: {}`", T::FAMILY, T::KINDS.join(" | "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let first: Option<String> = map.next_key()?;
        if first.as_deref() != Some("type") {
            return Err(de::Error::custom(format!(
                "a {} must start with `type:` (one of {})",
                T::FAMILY,
                T::KINDS.join(", ")
            )));
        }
        let kind: String = map.next_value()?;
        if !T::KINDS.contains(&kind.as_str()) {
            return Err(de::Error::unknown_variant(&kind, T::KINDS));
        }
        T::from_rest(&kind, map)
    }
}
