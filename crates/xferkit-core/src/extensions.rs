//! Values a layer above core attaches to a [`TransferRequest`](crate::TransferRequest)
//! or a [`FileInfo`](crate::FileInfo), one per type (like `http::Extensions`).
//!
//! Core knows none of them: a layer (the sharing layer, `xferkit-share`)
//! defines its own types and their accessors (`ShareInfo::of(&info)`). Any
//! `Clone + PartialEq + Debug + Serialize + Send + Sync + 'static` type is an
//! [`Extension`].
//!
//! What an extension shows:
//! - `Debug` of the map prints each value's `Debug`, and `FileInfo`'s `Debug`
//!   prints the map: an extension that holds a secret (a signed URL, a key)
//!   must redact it in its own `Debug`.
//! - `Serialize`: a value serializing to a JSON object adds its fields to the
//!   object the map is flattened into (`FileInfo` serializes with each
//!   extension's fields beside its own); any other value is left out.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;

/// A value an [`Extensions`] map holds (implemented for every type that fits).
pub trait Extension: Any + Send + Sync + fmt::Debug {
    #[doc(hidden)]
    fn clone_extension(&self) -> Box<dyn Extension>;
    #[doc(hidden)]
    fn eq_extension(&self, other: &dyn Extension) -> bool;
    #[doc(hidden)]
    fn to_json(&self) -> serde_json::Value;
}

impl<T> Extension for T
where
    T: Any + Send + Sync + fmt::Debug + Clone + PartialEq + serde::Serialize,
{
    fn clone_extension(&self) -> Box<dyn Extension> {
        Box::new(self.clone())
    }
    fn eq_extension(&self, other: &dyn Extension) -> bool {
        (other as &dyn Any).downcast_ref::<T>() == Some(self)
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// A map holding at most one value of each type.
#[derive(Default)]
pub struct Extensions {
    map: BTreeMap<TypeId, Box<dyn Extension>>,
}

impl Extensions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `value` in, returning the value of its type that was there.
    pub fn insert<T: Extension>(&mut self, value: T) -> Option<T> {
        self.map
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| (old as Box<dyn Any>).downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Extension>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| (&**v as &dyn Any).downcast_ref())
    }

    /// The value of type `T`, if any, to change.
    pub fn get_mut<T: Extension>(&mut self) -> Option<&mut T> {
        self.map
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| (&mut **v as &mut dyn Any).downcast_mut())
    }

    /// The value of type `T`, inserting `T::default()` first if there is none.
    pub fn get_or_default<T: Extension + Default>(&mut self) -> &mut T {
        let v = self
            .map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        match (&mut **v as &mut dyn Any).downcast_mut() {
            Some(v) => v,
            // The entry's key is the value's type id.
            None => unreachable!("an extension stored under another type's id"),
        }
    }

    /// Take the value of type `T` out.
    pub fn remove<T: Extension>(&mut self) -> Option<T> {
        self.map
            .remove(&TypeId::of::<T>())
            .and_then(|old| (old as Box<dyn Any>).downcast().ok().map(|b| *b))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Move every value of `other` in (replacing those of the same types).
    pub fn extend(&mut self, other: Extensions) {
        self.map.extend(other.map);
    }
}

impl Clone for Extensions {
    fn clone(&self) -> Self {
        Extensions {
            map: self
                .map
                .iter()
                .map(|(k, v)| (*k, v.clone_extension()))
                .collect(),
        }
    }
}

impl PartialEq for Extensions {
    fn eq(&self, other: &Self) -> bool {
        self.map.len() == other.map.len()
            && self
                .map
                .iter()
                .all(|(k, v)| other.map.get(k).is_some_and(|o| v.eq_extension(&**o)))
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.values()).finish()
    }
}

impl serde::Serialize for Extensions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for v in self.map.values() {
            if let serde_json::Value::Object(fields) = v.to_json() {
                for (k, v) in fields {
                    m.serialize_entry(&k, &v)?;
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
    struct A {
        n: u32,
    }

    #[derive(Clone, PartialEq, serde::Serialize)]
    struct Hidden(String);
    impl fmt::Debug for Hidden {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Hidden(<redacted>)")
        }
    }

    #[test]
    fn one_value_per_type_cloned_compared_and_shown_by_its_own_debug() {
        let mut e = Extensions::new();
        assert!(e.insert(A { n: 1 }).is_none());
        assert_eq!(e.insert(A { n: 2 }), Some(A { n: 1 }));
        e.insert(Hidden("secret".into()));
        assert_eq!(e.get::<A>(), Some(&A { n: 2 }));
        e.get_or_default::<A>().n += 1;
        assert_eq!(e.get::<A>().map(|a| a.n), Some(3));
        let c = e.clone();
        assert_eq!(c, e);
        e.get_mut::<A>().unwrap().n = 9;
        assert_ne!(c, e);
        let shown = format!("{e:?}");
        assert!(
            shown.contains("A { n: 9 }") && !shown.contains("secret"),
            "{shown}"
        );
        assert_eq!(e.remove::<Hidden>(), Some(Hidden("secret".into())));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn fields_of_object_values_serialize_flat_and_others_not_at_all() {
        #[derive(serde::Serialize)]
        struct Outer {
            id: u32,
            #[serde(flatten)]
            ext: Extensions,
        }
        let mut ext = Extensions::new();
        ext.insert(A { n: 4 });
        ext.insert(Hidden("x".into()));
        let v = serde_json::to_value(Outer { id: 1, ext }).unwrap();
        assert_eq!(v, serde_json::json!({"id": 1, "n": 4}));
    }
}
