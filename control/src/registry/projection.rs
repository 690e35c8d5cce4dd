//! Decoding only the fields a computation reads.
//!
//! A Table row needs a handful of an object's fields (a pod's name, age, container
//! statuses) but a full decode builds every field — managedFields, env, volumes — into
//! maps: for a 10,000-pod `kubectl get pods` that decode was most of the server's work.
//! A [`Projection`] names the fields to keep; the rest of the text is only scanned,
//! nothing is built for it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields of a JSON value to decode.
#[derive(Debug)]
pub enum Projection {
    /// The whole value.
    All,
    /// The listed keys of an object, each with its own projection; other keys are
    /// skipped. Applied to every element of an array; a scalar is kept as it is.
    Keys(&'static [(&'static str, Projection)]),
}

/// Decodes the parts of `text` that `projection` names.
pub fn decode(text: &[u8], projection: &Projection) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Project(projection).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Project<'p>(&'p Projection);

impl<'de> DeserializeSeed<'de> for Project<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Projection::All => Value::deserialize(d),
            Projection::Keys(keys) => d.deserialize_any(KeysVisitor(keys)),
        }
    }
}

struct KeysVisitor(&'static [(&'static str, Projection)]);

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let each = Projection::Keys(self.0);
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Project(&each))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            match self.0.iter().find(|(k, _)| *k == key) {
                Some((_, p)) => {
                    let v = map.next_value_seed(Project(p))?;
                    out.insert(key.into_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A map key, borrowed from the text when it has no escapes (most keys are skipped).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static PICK: Projection = Projection::Keys(&[
        (
            "metadata",
            Projection::Keys(&[("name", Projection::All), ("labels", Projection::All)]),
        ),
        (
            "items",
            Projection::Keys(&[("name", Projection::All), ("n", Projection::All)]),
        ),
        ("status", Projection::All),
    ]);

    #[test]
    fn keeps_the_named_fields_and_skips_the_rest() {
        let text = br#"{"kind":"X","metadata":{"name":"a\"b","managedFields":[{"f":{"x":1}}],"labels":{"k":"v"}},
            "items":[{"name":"c1","env":[{"v":"s"}],"n":-1.5},{"n":null},7,"s"],
            "status":{"phase":"Running","list":[1,{"deep":true}]},"spec":{"big":[1,2,3]}}"#;
        let v = decode(text, &PICK).expect("decodes");
        assert_eq!(
            v,
            json!({
                "metadata": {"name": "a\"b", "labels": {"k": "v"}},
                "items": [{"name": "c1", "n": -1.5}, {"n": null}, 7, "s"],
                "status": {"phase": "Running", "list": [1, {"deep": true}]},
            })
        );
        // Keys keep the text's order (the encoder relies on the same order as a full decode).
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["metadata", "items", "status"]);
    }

    #[test]
    fn all_is_a_full_decode_and_bad_text_is_an_error() {
        let text = br#"{"a":{"b":[1,"x",{"c":null}]},"d":true}"#;
        let full: Value = serde_json::from_slice(text).expect("JSON");
        assert_eq!(decode(text, &Projection::All).expect("decodes"), full);
        assert!(decode(br#"{"metadata":{"name":"a"}"#, &PICK).is_err());
        assert!(decode(br#"{"metadata":{}} trailing"#, &PICK).is_err());
        assert!(decode(br#"{"spec":{"skipped":[1,}}"#, &PICK).is_err());
    }
}
