//! What the proxy can tell about commands: which exec commands are `scp` transfers,
//! and (best effort) which lines a user typed into a shell.

/// An `scp` run on the target by a client's `scp -O` (the legacy protocol): `-t`
/// receives files (an upload), `-f` sends them (a download).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    pub upload: bool,
    pub path: String,
}

impl ScpCommand {
    pub fn parse(command: &str) -> Option<Self> {
        let mut words = command.split_whitespace();
        let program = words.next()?;
        if program.rsplit('/').next() != Some("scp") {
            return None;
        }
        let mut upload = None;
        let mut rest: Vec<&str> = Vec::new();
        for w in words.by_ref() {
            match w {
                "--" => break,
                "-t" => upload = Some(true),
                "-f" => upload = Some(false),
                w if w.starts_with('-') => {}
                w => {
                    rest.push(w);
                    break;
                }
            }
        }
        // The path is the rest of the line (it may hold quoted spaces).
        rest.extend(words);
        let path = rest.join(" ");
        let path = path.trim_matches(['\'', '"']);
        Some(Self {
            upload: upload?,
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
        })
    }
}

/// The longest typed line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;

/// Rebuilds lines from keystrokes sent to a shell's PTY. Best effort: it knows
/// backspace, Ctrl-U, Ctrl-C and Enter, and drops escape sequences (arrows, history,
/// tab completion), so a line edited with those may differ from what ran.
#[derive(Default)]
pub struct TypedLines {
    line: Vec<u8>,
    /// Inside an escape sequence: 1 after ESC, 2 inside CSI/SS3 parameters.
    escape: u8,
}

impl TypedLines {
    /// Feeds keystrokes; returns the lines completed by them.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in data {
            match self.escape {
                1 => {
                    self.escape = if b == b'[' || b == b'O' { 2 } else { 0 };
                    continue;
                }
                2 => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = 0;
                    }
                    continue;
                }
                _ => {}
            }
            match b {
                0x1b => self.escape = 1,
                b'\r' | b'\n' => {
                    let line = String::from_utf8_lossy(&self.line).trim().to_string();
                    self.line.clear();
                    if !line.is_empty() {
                        done.push(line);
                    }
                }
                0x7f | 0x08 => {
                    // Remove one whole UTF-8 character.
                    while let Some(c) = self.line.pop() {
                        if c & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                0x15 | 0x03 => self.line.clear(),
                b if b < 0x20 => {}
                b => {
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                    }
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_commands() {
        assert_eq!(
            ScpCommand::parse("scp -t /tmp/x"),
            Some(ScpCommand {
                upload: true,
                path: "/tmp/x".into()
            })
        );
        assert_eq!(
            ScpCommand::parse("/usr/bin/scp -v -p -f -- 'my file'"),
            Some(ScpCommand {
                upload: false,
                path: "my file".into()
            })
        );
        assert_eq!(ScpCommand::parse("scp a b"), None);
        assert_eq!(ScpCommand::parse("ls -t"), None);
    }

    #[test]
    fn typed_lines_follow_edits() {
        let mut t = TypedLines::default();
        assert!(t.feed(b"ls -la").is_empty());
        assert_eq!(t.feed(b"x\x7f\r"), vec!["ls -la".to_string()]);
        assert_eq!(
            t.feed(b"\x1b[Awhoami\x1b[D\r\n"),
            vec!["whoami".to_string()]
        );
        assert_eq!(
            t.feed(b"rm -rf /\x15echo ok\r"),
            vec!["echo ok".to_string()]
        );
        assert!(t.feed(b"\r").is_empty());
        assert_eq!(t.feed("é\x7fa\r".as_bytes()), vec!["a".to_string()]);
    }
}
