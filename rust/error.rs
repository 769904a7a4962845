//! One error type for the engine; python.rs maps it to Python exceptions.
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The file could not be opened or read (missing, a directory, permissions).
    Io(String),
    /// The file is not a model we can load: bad magic, truncated, inconsistent.
    Format(String),
    /// A bad argument from the caller (token ids, prompt too long).
    Invalid(String),
    /// A generation parameter out of its range; `name` is the parameter, `msg` says the range.
    Param { name: &'static str, msg: String },
    /// A batch's KV cells are held or reserved by running sequences: the request fits once
    /// one of them finishes (a server keeps it waiting).
    KvFull(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(m)
            | Error::Format(m)
            | Error::Invalid(m)
            | Error::KvFull(m)
            | Error::Param { msg: m, .. } => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub fn format_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Format(msg.into()))
}

pub fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

pub fn param_err<T>(name: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Param {
        name,
        msg: msg.into(),
    })
}
