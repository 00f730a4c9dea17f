//! The messages of a checkpoint for a kernel update (`spec/agent.md` §7):
//! the host names systemd units in `CHECKPOINT`; the guest dumps them with
//! CRIU, sends each image file CRIU wrote as a `PROCESS_FILE`, then says
//! how each unit fared in `CHECKPOINTED`. Names are checked as
//! `spec/format.md` §7.9 checks them, so what the host keeps can be
//! written as files into one directory per unit and never outside it.

use serde_json::{Map, Value, json};

use crate::fields::{MessageError, err, object, string, uint};
use crate::frame::Kind;
use crate::limits::{MAX_FILE_NAME, MAX_RELEASE, MAX_UNIT_NAME, MAX_UNITS};

/// Host: dump these systemd units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The units, 1 to 64, unique.
    pub units: Vec<String>,
}

/// Guest: one image file CRIU wrote for a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFile {
    /// The unit it belongs to (one of the [`Checkpoint`]'s).
    pub unit: String,
    /// The file's name (`pstree.img`).
    pub name: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// Guest: how the units of a [`Checkpoint`] fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    /// The guest kernel's release (`uname -r`).
    pub kernel: String,
    /// The version of the CRIU that dumped, `None` when none could run.
    pub criu_version: Option<String>,
    /// One entry per unit, at most 64, unique.
    pub units: Vec<UnitOutcome>,
}

/// How one unit fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitOutcome {
    /// The unit.
    pub unit: String,
    /// Whether CRIU dumped it (and every file was sent).
    pub dumped: bool,
    /// `PROCESS_FILE`s sent for it.
    pub files: u32,
    /// Bytes of those files.
    pub bytes: u64,
    /// Why it was not dumped.
    pub reason: Option<String>,
}

/// Whether `s` is a unit name: a systemd service, 1 to 255 of
/// `A-Z a-z 0-9 : _ . @ -` ending in `.service` with a byte before it.
pub fn valid_unit_name(s: &str) -> bool {
    (".service".len() + 1..=MAX_UNIT_NAME).contains(&s.len())
        && s.ends_with(".service")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b":_.@-".contains(&b))
}

/// Whether `s` is a CRIU image file name: 1 to 64 of `A-Z a-z 0-9 _ . -`,
/// not starting with `.`.
pub fn valid_file_name(s: &str) -> bool {
    (1..=MAX_FILE_NAME).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `s` is a kernel release or CRIU version: 1 to 64 bytes, no
/// control character.
pub fn valid_release(s: &str) -> bool {
    (1..=MAX_RELEASE).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// A unit name at `at`, checked.
pub(crate) fn unit_name(s: String, k: Kind, at: &str) -> Result<String, MessageError> {
    if !valid_unit_name(&s) {
        return Err(err(
            k,
            format!("{at} {s:?} is not a service's unit name (1 to 255 of A-Z a-z 0-9 : _ . @ -, NAME.service)"),
        ));
    }
    Ok(s)
}

/// A list of units with no name twice.
pub(crate) fn unique<'a>(names: impl Iterator<Item = &'a str>, k: Kind) -> Result<(), MessageError> {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        if seen.contains(&n) {
            return Err(err(k, format!("unit {n} is listed twice")));
        }
        seen.push(n);
    }
    Ok(())
}

/// The `reason` of a unit's outcome `u` (at `at`): a bounded string, or
/// none.
pub(crate) fn reason(u: &Map<String, Value>, k: Kind, at: &str) -> Result<Option<String>, MessageError> {
    match u.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(u, "reason", k, at).map(Some),
    }
}

/// The `units` list of `o`, at most [`MAX_UNITS`].
pub(crate) fn units(o: &Map<String, Value>, k: Kind) -> Result<&Vec<Value>, MessageError> {
    let list = o.get("units").and_then(Value::as_array).ok_or_else(|| err(k, "units is missing or not a list"))?;
    if list.len() > MAX_UNITS {
        return Err(err(k, format!("{} units, over {MAX_UNITS}", list.len())));
    }
    Ok(list)
}

impl Checkpoint {
    /// Decodes a `CHECKPOINT` payload.
    ///
    /// # Errors
    /// [`MessageError`] naming what is wrong.
    pub fn decode(p: &[u8]) -> Result<Checkpoint, MessageError> {
        Ok(Checkpoint { units: unit_names(Kind::Checkpoint, p)? })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        json!({"units": self.units}).to_string().into_bytes()
    }
}

/// The payload of a message that names units (`{"units": [...]}`): 1 to
/// 64 unit names, none twice.
pub(crate) fn unit_names(k: Kind, p: &[u8]) -> Result<Vec<String>, MessageError> {
    let o = object(k, p)?;
    let list = units(&o, k)?;
    if list.is_empty() {
        return Err(err(k, "units is empty"));
    }
    let units = list
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let s = u.as_str().ok_or_else(|| err(k, format!("units[{i}] is not a string")))?;
            unit_name(s.to_owned(), k, &format!("units[{i}]"))
        })
        .collect::<Result<Vec<String>, _>>()?;
    unique(units.iter().map(String::as_str), k)?;
    Ok(units)
}

impl ProcessFile {
    /// Decodes a `PROCESS_FILE` payload: u8 unit name length, unit name, u8
    /// file name length, file name, the file's bytes.
    ///
    /// # Errors
    /// [`MessageError`] naming what is wrong.
    pub fn decode(p: &[u8]) -> Result<ProcessFile, MessageError> {
        ProcessFile::decode_as(Kind::ProcessFile, p)
    }

    /// Decodes the payload of a `k` frame (`PROCESS_FILE` or `RESTORE_FILE`).
    ///
    /// # Errors
    /// [`MessageError`] naming what is wrong.
    pub fn decode_as(k: Kind, p: &[u8]) -> Result<ProcessFile, MessageError> {
        let field = |rest: &[u8], what: &str| -> Result<(String, usize), MessageError> {
            let (&n, tail) = rest.split_first().ok_or_else(|| err(k, format!("ends before its {what} length")))?;
            let b = tail.get(..usize::from(n)).ok_or_else(|| err(k, format!("ends inside its {what}")))?;
            let s = std::str::from_utf8(b).map_err(|_| err(k, format!("its {what} is not UTF-8")))?;
            Ok((s.to_owned(), 1 + usize::from(n)))
        };
        let (unit, used) = field(p, "unit name")?;
        let unit = unit_name(unit, k, "unit")?;
        let (name, used2) = field(&p[used..], "file name")?;
        if !valid_file_name(&name) {
            return Err(err(k, format!("file name {name:?} is not 1 to 64 of A-Z a-z 0-9 _ . - not starting with .")));
        }
        Ok(ProcessFile { unit, name, data: p[used + used2..].to_vec() })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + self.unit.len() + self.name.len() + self.data.len());
        v.push(self.unit.len() as u8);
        v.extend_from_slice(self.unit.as_bytes());
        v.push(self.name.len() as u8);
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&self.data);
        v
    }
}

impl Checkpointed {
    /// Decodes a `CHECKPOINTED` payload.
    ///
    /// # Errors
    /// [`MessageError`] naming the field that is missing or wrong.
    pub fn decode(p: &[u8]) -> Result<Checkpointed, MessageError> {
        let k = Kind::Checkpointed;
        let o = object(k, p)?;
        let release = |v: Option<&Value>, key: &str| -> Result<Option<String>, MessageError> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if valid_release(s) => Ok(Some(s.clone())),
                Some(_) => Err(err(k, format!("{key} is not 1 to {MAX_RELEASE} bytes without a control character"))),
            }
        };
        let kernel = release(o.get("kernel"), "kernel")?.ok_or_else(|| err(k, "kernel is missing"))?;
        let criu_version = release(o.get("criu_version"), "criu_version")?;
        let mut out = Vec::new();
        for (i, u) in units(&o, k)?.iter().enumerate() {
            let at = format!("units[{i}].");
            let u = u.as_object().ok_or_else(|| err(k, format!("units[{i}] is not an object")))?;
            let dumped = u
                .get("dumped")
                .and_then(Value::as_bool)
                .ok_or_else(|| err(k, format!("{at}dumped is missing or not a boolean")))?;
            let reason = reason(u, k, &at)?;
            let count = |key: &str| uint(u, key, k).map_err(|e| err(k, format!("{at}{}", e.what)));
            out.push(UnitOutcome {
                unit: unit_name(string(u, "unit", k, &at)?, k, &format!("{at}unit"))?,
                dumped,
                files: u32::try_from(count("files")?).map_err(|_| err(k, format!("{at}files is out of range")))?,
                bytes: count("bytes")?,
                reason,
            });
        }
        unique(out.iter().map(|u| u.unit.as_str()), k)?;
        Ok(Checkpointed { kernel, criu_version, units: out })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let units: Vec<Value> = self
            .units
            .iter()
            .map(
                |u| json!({"unit": u.unit, "dumped": u.dumped, "files": u.files, "bytes": u.bytes, "reason": u.reason}),
            )
            .collect();
        json!({"kernel": self.kernel, "criu_version": self.criu_version, "units": units}).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Checkpointed {
        Checkpointed {
            kernel: "6.1.0-28-cloud-amd64".into(),
            criu_version: Some("3.19".into()),
            units: vec![
                UnitOutcome { unit: "nginx.service".into(), dumped: true, files: 14, bytes: 2_310_144, reason: None },
                UnitOutcome {
                    unit: "getty@tty1.service".into(),
                    dumped: false,
                    files: 0,
                    bytes: 0,
                    reason: Some("criu dump: exit status 1".into()),
                },
            ],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let c = Checkpoint { units: vec!["nginx.service".into(), "redis-server.service".into()] };
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        let f = ProcessFile { unit: "nginx.service".into(), name: "pages-1.img".into(), data: vec![0, 1, 2, 255] };
        assert_eq!(ProcessFile::decode(&f.encode()).unwrap(), f);
        let empty = ProcessFile { data: Vec::new(), ..f };
        assert_eq!(ProcessFile::decode(&empty.encode()).unwrap(), empty);
        assert_eq!(Checkpointed::decode(&outcome().encode()).unwrap(), outcome());
        let no_criu = Checkpointed { criu_version: None, units: Vec::new(), ..outcome() };
        assert_eq!(Checkpointed::decode(&no_criu.encode()).unwrap(), no_criu);
    }

    #[test]
    fn hostile_checkpoints_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"[]", "not a JSON object"),
            (b"{\"units\":[]}", "units is empty"),
            (b"{\"units\":\"a.service\"}", "units is missing or not a list"),
            (b"{\"units\":[\"../a.service\"]}", "units[0] \"../a.service\" is not a service"),
            (b"{\"units\":[\"sshd.socket\"]}", "units[0] \"sshd.socket\""),
            (b"{\"units\":[7]}", "units[0] is not a string"),
            (b"{\"units\":[\"a.service\",\"a.service\"]}", "unit a.service is listed twice"),
        ];
        for (p, want) in cases {
            let e = Checkpoint::decode(p).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("u{i}.service")).collect();
        let e = Checkpoint::decode(&Checkpoint { units: many }.encode()).unwrap_err();
        assert!(e.to_string().contains("65 units, over 64"), "{e}");
    }

    #[test]
    fn hostile_process_files_name_the_field() {
        let file = |unit: &str, name: &str| ProcessFile { unit: unit.into(), name: name.into(), data: b"x".to_vec() };
        let cases: [(Vec<u8>, &str); 8] = [
            (Vec::new(), "ends before its unit name length"),
            (b"\x09a.service".to_vec(), "ends before its file name length"),
            (b"\x20a.service".to_vec(), "ends inside its unit name"),
            (b"\x09a.service\x05ab".to_vec(), "ends inside its file name"),
            (file("a.service", "../x").encode(), "file name \"../x\""),
            (file("a.service", "a/b").encode(), "file name \"a/b\""),
            (file("a.service", ".img").encode(), "file name \".img\""),
            (file("a/b.service", "x.img").encode(), "unit \"a/b.service\""),
        ];
        for (p, want) in cases {
            let e = ProcessFile::decode(&p).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let e = ProcessFile::decode(b"\x09a.service\x02\xff\xfe").unwrap_err();
        assert!(e.to_string().contains("file name is not UTF-8"), "{e}");
    }

    #[test]
    fn hostile_outcomes_name_the_field() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_slice(&outcome().encode()).unwrap();
            f(&mut v);
            Checkpointed::decode(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert!(with(&|v| v["kernel"] = json!("6.1\u{1b}[2J")).contains("kernel is not 1 to 64 bytes"));
        assert!(with(&|v| v["kernel"] = Value::Null).contains("kernel is missing"));
        assert!(with(&|v| v["criu_version"] = json!("x".repeat(65))).contains("criu_version"));
        assert!(with(&|v| v["units"][1]["unit"] = json!("nginx.service")).contains("listed twice"));
        assert!(with(&|v| v["units"][0]["unit"] = json!("x")).contains("units[0].unit \"x\""));
        assert!(with(&|v| v["units"][0]["files"] = json!(1u64 << 40)).contains("units[0].files is out of range"));
        assert!(with(&|v| v["units"][0]["dumped"] = json!("yes")).contains("units[0].dumped"));
        assert!(with(&|v| v["units"][1]["reason"] = json!("a\0b")).contains("units[1].reason"));
        assert!(with(&|v| v["units"][0] = json!(1)).contains("units[0] is not an object"));
        assert!(with(&|v| v["units"][1]["bytes"] = json!(-1)).contains("units[1].bytes is missing or not an unsigned"));
    }
}
