//! The messages that bring checkpointed units back after a kernel update
//! (`spec/agent.md` §7): at a point of the new kernel's boot, before any
//! unit starts, the host sends each unit's CRIU image files as
//! `RESTORE_FILE`s (a `PROCESS_FILE`'s payload) and names the units in
//! `RESTORE`; once the guest is up it tells in `RESTORED` how each unit
//! came back: restored, or started cold and why.

use serde_json::{Value, json};

use crate::checkpoint::{reason, unique, unit_name, unit_names, units, valid_release};
use crate::fields::{MessageError, err, object, string};
use crate::frame::Kind;
use crate::limits::MAX_RELEASE;

/// Host: restore these units from the `RESTORE_FILE`s sent before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// The units, 1 to 64, unique.
    pub units: Vec<String>,
}

/// Guest: how the units of a [`Restore`] came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The guest kernel's release (`uname -r`): the new one.
    pub kernel: String,
    /// One entry per unit, at most 64, unique.
    pub units: Vec<RestoreOutcome>,
}

/// How one unit came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The unit.
    pub unit: String,
    /// CRIU restored its processes; else it was started cold.
    pub restored: bool,
    /// Why it was not restored.
    pub reason: Option<String>,
}

impl Restore {
    /// Decodes a `RESTORE` payload.
    ///
    /// # Errors
    /// [`MessageError`] naming what is wrong.
    pub fn decode(p: &[u8]) -> Result<Restore, MessageError> {
        Ok(Restore { units: unit_names(Kind::Restore, p)? })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        json!({"units": self.units}).to_string().into_bytes()
    }
}

impl Restored {
    /// Decodes a `RESTORED` payload.
    ///
    /// # Errors
    /// [`MessageError`] naming the field that is missing or wrong.
    pub fn decode(p: &[u8]) -> Result<Restored, MessageError> {
        let k = Kind::Restored;
        let o = object(k, p)?;
        let kernel = match o.get("kernel") {
            Some(Value::String(s)) if valid_release(s) => s.clone(),
            _ => {
                return Err(err(
                    k,
                    format!("kernel is missing or not 1 to {MAX_RELEASE} bytes without a control character"),
                ));
            }
        };
        let mut out = Vec::new();
        for (i, u) in units(&o, k)?.iter().enumerate() {
            let at = format!("units[{i}].");
            let u = u.as_object().ok_or_else(|| err(k, format!("units[{i}] is not an object")))?;
            let restored = u
                .get("restored")
                .and_then(Value::as_bool)
                .ok_or_else(|| err(k, format!("{at}restored is missing or not a boolean")))?;
            let reason = reason(u, k, &at)?;
            out.push(RestoreOutcome {
                unit: unit_name(string(u, "unit", k, &at)?, k, &format!("{at}unit"))?,
                restored,
                reason,
            });
        }
        unique(out.iter().map(|u| u.unit.as_str()), k)?;
        Ok(Restored { kernel, units: out })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let units: Vec<Value> =
            self.units.iter().map(|u| json!({"unit": u.unit, "restored": u.restored, "reason": u.reason})).collect();
        json!({"kernel": self.kernel, "units": units}).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Restored {
        Restored {
            kernel: "6.1.0-56-cloud-amd64".into(),
            units: vec![
                RestoreOutcome { unit: "memcached.service".into(), restored: true, reason: None },
                RestoreOutcome {
                    unit: "nginx.service".into(),
                    restored: false,
                    reason: Some("criu restore: exit status 1".into()),
                },
            ],
        }
    }

    #[test]
    fn restore_messages_round_trip() {
        let r = Restore { units: vec!["memcached.service".into()] };
        assert_eq!(Restore::decode(&r.encode()).unwrap(), r);
        assert_eq!(Restored::decode(&outcome().encode()).unwrap(), outcome());
    }

    #[test]
    fn hostile_restore_messages_name_the_field() {
        let e = Restore::decode(b"{\"units\":[\"../x.service\"]}").unwrap_err();
        assert!(e.to_string().starts_with("Restore message: units[0]"), "{e}");
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_slice(&outcome().encode()).unwrap();
            f(&mut v);
            Restored::decode(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert!(with(&|v| v["kernel"] = json!("6.1\n")).contains("kernel is missing or not 1 to 64"));
        assert!(with(&|v| v["units"][1]["unit"] = json!("memcached.service")).contains("listed twice"));
        assert!(with(&|v| v["units"][0]["restored"] = json!(1)).contains("units[0].restored"));
        assert!(with(&|v| v["units"][1]["reason"] = json!(7)).contains("units[1].reason"));
        assert!(with(&|v| v["units"] = json!({})).contains("units is missing or not a list"));
    }
}
