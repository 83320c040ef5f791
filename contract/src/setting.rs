//! The error every component gives for a bad setting: the variable, the
//! value it held, and what is wrong with it.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {problem}")]
pub struct SettingError {
    pub name: String,
    pub value: String,
    pub problem: String,
}

impl SettingError {
    pub fn new(name: impl Into<String>, value: impl Into<String>, problem: impl Into<String>) -> Self {
        SettingError {
            name: name.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }
}
