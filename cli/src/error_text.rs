//! How the `cyclotron` command prints an error: the message and its causes, each once.
//!
//! Library errors often put their cause in their own message (`"{path}: {source}"`) and also
//! return it as `source()`, so printing the chain as it is (`{:#}`) said the cause twice:
//! `runs/x: No such file or directory (os error 2): No such file or directory (os error 2)`.
//! A cause whose text the message already ends with adds nothing and is left out.

/// `error: cause: cause …` with every cause that the text so far does not already say.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.ends_with(&part) || text.contains(&format!("{part}: ")) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Io {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Io {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_the_message_already_says_is_said_once() {
        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Io { path: "runs/x".into(), source }).context("reading the spec");
        let text = error_chain(&e);
        assert_eq!(text, "reading the spec: runs/x: entity not found");
        // causes the message does not contain are kept
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
