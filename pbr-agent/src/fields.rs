//! What every JSON message is read with: its error type and the checked
//! reads of an object and its fields (bounded strings, unsigned integers).

use serde_json::Value;

use crate::frame::Kind;
use crate::limits::MAX_STRING;

/// Why a frame's payload is not a valid message.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} message: {what}")]
pub struct MessageError {
    /// The frame's kind.
    pub kind: Kind,
    /// What is wrong.
    pub what: String,
}

/// A [`MessageError`] of a `kind` frame.
pub(crate) fn err(kind: Kind, what: impl Into<String>) -> MessageError {
    MessageError { kind, what: what.into() }
}

/// The payload as a JSON object.
pub(crate) fn object(k: Kind, p: &[u8]) -> Result<serde_json::Map<String, Value>, MessageError> {
    match serde_json::from_slice::<Value>(p) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(err(k, "not a JSON object")),
        Err(e) => Err(err(k, format!("not JSON: {e}"))),
    }
}

/// Field `key` as an unsigned integer.
pub(crate) fn uint(o: &serde_json::Map<String, Value>, key: &str, k: Kind) -> Result<u64, MessageError> {
    o.get(key).and_then(Value::as_u64).ok_or_else(|| err(k, format!("{key} is missing or not an unsigned integer")))
}

/// Field `key` as a string of at most [`MAX_STRING`] bytes without NUL
/// (`at` names where the object is, for the error).
pub(crate) fn string(o: &serde_json::Map<String, Value>, key: &str, k: Kind, at: &str) -> Result<String, MessageError> {
    let s =
        o.get(key).and_then(Value::as_str).ok_or_else(|| err(k, format!("{at}{key} is missing or not a string")))?;
    if s.len() > MAX_STRING || s.contains('\0') {
        return Err(err(k, format!("{at}{key} is over {MAX_STRING} bytes or holds a NUL")));
    }
    Ok(s.to_owned())
}
