//! The `loras` field of an image-to-image request, as text on the wire (resolving the ids
//! to adapter files is the engine's): a JSON object mapping LoRA ids (hub
//! repositories or local files) to strengths, e.g. `{"nerijs/pixel-art-xl": 1.2}`.

use crate::text::quoted;

/// The most LoRAs one request may apply (ai-runner's limit: more slow every step down).
pub const MAX_LORAS: usize = 4;

/// Parses and validates the `loras` field, as ai-runner does, into `(id, strength)` pairs in
/// the order given. An empty field or `{}` means no LoRA. A repeated id keeps its first
/// position and its last strength, as a Python dict built from the JSON would.
///
/// Strengths are JSON numbers or strings holding one (ai-runner converts with `float()`),
/// finite and >= 0. Unlike ai-runner, `true`/`false` are not numbers here, and neither are
/// NaN or infinity, which would turn every pixel into NaN.
pub fn parse_loras(text: &str) -> Result<Vec<(String, f64)>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let entries: OrderedObject = serde_json::from_str(text)
        .map_err(|_| format!("Unable to parse '{}' as JSON.", quoted(text)))?;
    let mut loras: Vec<(String, f64)> = Vec::with_capacity(entries.0.len());
    let mut all_valid = true;
    for (id, value) in entries.0 {
        let strength = strength(&value);
        all_valid &= strength.is_some();
        let strength = strength.unwrap_or(0.0);
        match loras.iter_mut().find(|(seen, _)| *seen == id) {
            Some(entry) => entry.1 = strength,
            None => loras.push((id, strength)),
        }
    }
    if !all_valid {
        return Err("All strengths must be numbers greater than or equal to 0.0.".into());
    }
    if loras.len() > MAX_LORAS {
        return Err(format!("Too many LoRas provided. Maximum is {MAX_LORAS}."));
    }
    Ok(loras)
}

/// A strength as ai-runner accepts it, or `None`.
fn strength(value: &serde_json::Value) -> Option<f64> {
    let v = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        // Python's float() ignores surrounding whitespace.
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// A JSON object's entries in document order (serde_json's map would sort them, and the
/// order of LoRAs is the order they are applied and reported in).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        match parse_loras(text) {
            Err(m) => m,
            other => panic!("{text:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn empty_field_and_empty_object_mean_no_lora() {
        assert!(parse_loras("").unwrap().is_empty());
        assert!(parse_loras("{}").unwrap().is_empty());
        assert!(parse_loras(" { } ").unwrap().is_empty());
    }

    #[test]
    fn keeps_order_numbers_and_numeric_strings() {
        let got = parse_loras(r#"{"z/b": 1.2, "a/a": 0, "m/c": "0.5", "/x.safetensors": " 2 "}"#)
            .unwrap();
        let want = [
            ("z/b", 1.2),
            ("a/a", 0.0),
            ("m/c", 0.5),
            ("/x.safetensors", 2.0),
        ];
        assert_eq!(got.len(), want.len());
        for ((id, s), (wid, ws)) in got.iter().zip(want) {
            assert_eq!((id.as_str(), *s), (wid, ws));
        }
    }

    #[test]
    fn repeated_id_keeps_first_place_and_last_strength() {
        let got = parse_loras(r#"{"a/a": 1, "b/b": 2, "a/a": 3}"#).unwrap();
        assert_eq!(
            got,
            vec![("a/a".to_string(), 3.0), ("b/b".to_string(), 2.0)]
        );
    }

    #[test]
    fn not_json_is_refused_quoting_the_text() {
        assert_eq!(message("{nope"), "Unable to parse '{nope' as JSON.");
        assert_eq!(message("[1, 2]"), "Unable to parse '[1, 2]' as JSON.");
        assert_eq!(message(" "), "Unable to parse ' ' as JSON.");
        // Control characters are escaped, not echoed.
        assert_eq!(message("x\ny"), "Unable to parse 'x\\ny' as JSON.");
    }

    #[test]
    fn bad_strengths_are_refused() {
        for text in [
            r#"{"a/a": -0.1}"#,
            r#"{"a/a": "high"}"#,
            r#"{"a/a": null}"#,
            r#"{"a/a": true}"#,
            r#"{"a/a": [1]}"#,
            r#"{"a/a": "nan"}"#,
            r#"{"a/a": "inf"}"#,
            r#"{"a/a": 1, "b/b": -1}"#,
        ] {
            assert_eq!(
                message(text),
                "All strengths must be numbers greater than or equal to 0.0.",
                "{text}"
            );
        }
    }

    #[test]
    fn more_than_four_are_refused() {
        assert_eq!(
            parse_loras(r#"{"a/a":1,"b/b":1,"c/c":1,"d/d":1}"#)
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            message(r#"{"a/a":1,"b/b":1,"c/c":1,"d/d":1,"e/e":1}"#),
            "Too many LoRas provided. Maximum is 4."
        );
        // As in ai-runner, strengths are checked before the count.
        assert_eq!(
            message(r#"{"a/a":1,"b/b":1,"c/c":1,"d/d":1,"e/e":-1}"#),
            "All strengths must be numbers greater than or equal to 0.0."
        );
    }
}
