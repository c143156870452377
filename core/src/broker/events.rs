//! How events travel on the deliveries queue.
//!
//! One event is its envelope, a JSON object, as it always was. Several events of one type
//! (the events of one batch request) travel as one message: a JSON array of their envelopes,
//! each byte for byte what it would be alone. The broker then pays for a message, its
//! confirm, its replication and its ack once for all of them, and a dispatcher acks the
//! message once every target of every event in it is settled.

use bytes::Bytes;
use serde_json::value::RawValue;

/// The body of one message carrying `envelopes` (each an event's JSON envelope).
pub fn encode(envelopes: &[Vec<u8>]) -> Vec<u8> {
    if let [one] = envelopes {
        return one.clone();
    }
    let len = envelopes.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, e) in envelopes.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// The envelopes a message carries, each a slice of its body (nothing is copied): the body
/// itself for a message of one event, the array's elements for several.
pub fn decode(body: &Bytes) -> Result<Vec<Bytes>, serde_json::Error> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| body[i]) != Some(b'[') {
        return Ok(vec![body.clone()]);
    }
    let elements: Vec<&RawValue> = serde_json::from_slice(body)?;
    if elements.is_empty() {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "a message with no events",
        ));
    }
    let base = body.as_ptr() as usize;
    Ok(elements
        .iter()
        .map(|raw| {
            let at = raw.get().as_ptr() as usize - base;
            body.slice(at..at + raw.get().len())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_is_its_envelope_and_several_are_an_array_of_them() {
        let a = br#"{"id":"evt_a","n":[1,2]}"#.to_vec();
        let b = br#"{"id":"evt_b","s":"x, ]\"y"}"#.to_vec();
        assert_eq!(encode(std::slice::from_ref(&a)), a);
        let body = Bytes::from(encode(&[a.clone(), b.clone()]));
        assert_eq!(body.first(), Some(&b'['));
        let out = decode(&body).unwrap();
        assert_eq!(out, vec![Bytes::from(a.clone()), Bytes::from(b)]);
        assert_eq!(
            decode(&Bytes::from(a.clone())).unwrap(),
            vec![Bytes::from(a)]
        );
    }

    #[test]
    fn a_broken_or_empty_array_is_an_error() {
        assert!(decode(&Bytes::from_static(b"[{\"id\":1},")).is_err());
        assert!(decode(&Bytes::from_static(b" [ ]")).is_err());
        // An object that is not JSON is left for the event's own parse to refuse.
        assert_eq!(decode(&Bytes::from_static(b"{oops")).unwrap().len(), 1);
    }
}
