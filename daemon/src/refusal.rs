//! Why the daemon did not start, for `serve` and the pid lock it takes.

/// Why the daemon did not start: an exit code and an operator message.
#[derive(Debug)]
pub struct Refusal {
    pub code: i32,
    pub message: String,
}

impl Refusal {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
