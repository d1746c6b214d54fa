//! Minimal `--key value` flag parsing shared by the examples.
//!
//! The examples take a handful of flags each; a full argument-parser dependency would cost
//! more build time than the parsing it saves. Malformed values are errors that name the flag,
//! never silently replaced by the default; [`Flags::parse_env`] also refuses flags the program
//! does not read (a typo must not start an hours-long run with defaults) and answers `--help`
//! with the flags it does read.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::str::FromStr;

/// Command-line flags of the form `--key value` or bare `--switch`.
#[derive(Debug, Clone)]
pub struct Flags {
    argv: Vec<String>,
    /// Names the program asked for (so the others can be reported as unknown).
    read: RefCell<BTreeSet<String>>,
}

/// A flag whose value did not parse.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: cannot parse {value:?} ({reason})")]
pub struct FlagError {
    /// The flag name without the dashes.
    pub flag: String,
    /// The value given.
    pub value: String,
    /// Why it did not parse.
    pub reason: String,
}

impl Flags {
    /// The process arguments after the program name.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    /// Flags from an explicit argument list (for tests).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Self {
        Self {
            argv: args.into_iter().map(Into::into).collect(),
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// Parses the process arguments with `parse`; prints the flags `parse` reads and exits 0 on
    /// `--help`/`-h`; exits 2 with a message on a malformed value or a flag `parse` never read.
    pub fn parse_env<T>(parse: impl FnOnce(&Flags) -> Result<T, FlagError>) -> T {
        let flags = Self::from_env();
        let parsed = parse(&flags);
        let known = flags
            .read
            .borrow()
            .iter()
            .map(|n| format!("--{n}"))
            .collect::<Vec<_>>();
        if flags.argv.iter().any(|a| a == "--help" || a == "-h") {
            println!("flags: {}", known.join(" "));
            std::process::exit(0);
        }
        let args = parsed.unwrap_or_else(|e| Self::exit_usage(e));
        if let Err(e) = flags.check_known() {
            Self::exit_usage(e)
        }
        args
    }

    /// `--name` arguments that no `get`/`opt`/`switch`/`raw` call asked for.
    pub fn unknown(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.argv
            .iter()
            .filter_map(|a| a.strip_prefix("--"))
            .filter(|n| !read.contains(*n))
            .map(str::to_string)
            .collect()
    }

    /// An error naming the first flag no call asked for, with the flags that were.
    pub fn check_known(&self) -> Result<(), FlagError> {
        match self.unknown().first() {
            None => Ok(()),
            Some(n) => Err(FlagError {
                flag: n.clone(),
                value: self.raw_unrecorded(n).unwrap_or("").into(),
                reason: format!(
                    "unknown flag; this program reads {}",
                    self.read
                        .borrow()
                        .iter()
                        .map(|n| format!("--{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }),
        }
    }

    /// The raw value following `--name`, if the flag is present with a value.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.read.borrow_mut().insert(name.to_string());
        self.raw_unrecorded(name)
    }

    fn raw_unrecorded(&self, name: &str) -> Option<&str> {
        let key = format!("--{name}");
        let i = self.argv.iter().position(|a| *a == key)?;
        self.argv
            .get(i + 1)
            .map(String::as_str)
            .filter(|v| !v.starts_with("--"))
    }

    /// The parsed value of `--name`, or `default` when absent.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, FlagError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e: T::Err| FlagError {
                flag: name.into(),
                value: v.into(),
                reason: e.to_string(),
            }),
        }
    }

    /// The parsed value of `--name`, or `None` when absent.
    pub fn opt<T: FromStr>(&self, name: &str) -> Result<Option<T>, FlagError>
    where
        T::Err: std::fmt::Display,
    {
        self.raw(name)
            .map(|v| {
                v.parse().map_err(|e: T::Err| FlagError {
                    flag: name.into(),
                    value: v.into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Whether the bare switch `--name` is present.
    pub fn switch(&self, name: &str) -> bool {
        self.read.borrow_mut().insert(name.to_string());
        let key = format!("--{name}");
        self.argv.contains(&key)
    }

    /// Prints `err` and exits with status 2 (bad usage); for examples' `main`.
    pub fn exit_usage(err: impl std::fmt::Display) -> ! {
        eprintln!("error: {err}");
        std::process::exit(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_defaults_and_switches() {
        let f = Flags::new(["--n", "12", "--fast", "--lr", "3e-4", "--name", "x"]);
        assert_eq!(f.get("n", 1usize).unwrap(), 12);
        assert_eq!(f.get("steps", 50usize).unwrap(), 50);
        assert!((f.get("lr", 0.0f64).unwrap() - 3e-4).abs() < 1e-12);
        assert!(f.switch("fast") && !f.switch("slow"));
        assert_eq!(f.opt::<String>("name").unwrap().as_deref(), Some("x"));
        // a switch followed by another flag has no value
        assert_eq!(f.raw("fast"), None);
        let err = Flags::new(["--n", "twelve"]).get("n", 1usize).unwrap_err();
        assert_eq!(err.flag, "n");
        assert!(err.to_string().contains("twelve"), "{err}");
        // every flag given was read: nothing unknown
        assert!(f.check_known().is_ok(), "{:?}", f.unknown());
    }

    #[test]
    fn unknown_flags_are_named() {
        let f = Flags::new(["--samples", "10", "--sampels", "20", "--fast"]);
        assert_eq!(f.get("samples", 1usize).unwrap(), 10);
        assert!(!f.switch("slow"));
        assert_eq!(f.unknown(), vec!["sampels".to_string(), "fast".to_string()]);
        let err = f.check_known().unwrap_err();
        assert_eq!((err.flag.as_str(), err.value.as_str()), ("sampels", "20"));
        assert!(err.to_string().contains("--samples --slow"), "{err}");
    }
}
