//! Shell command lines, as far as they can be understood without running them.
//!
//! [`parse`] splits a command line into pipelines of simple commands the way a POSIX
//! shell would tokenize it: quotes and backslashes are removed (`'r'm` is `rm`),
//! `;`, `&&`, `||`, `&`, newlines and subshells separate commands, `$(...)` and
//! backticks are parsed as commands of their own, `sh -c '...'` and `eval` are parsed
//! recursively, and wrappers (`sudo`, `env`, `nice`, `timeout`, `xargs`, ...) are
//! looked through. A program name that is only known at run time (`$CMD`, `r*m`) is
//! reported as dynamic so rules can fail closed on it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleCommand {
    /// The program's base name (`/usr/bin/rm` is `rm`).
    pub program: String,
    /// Whether the program name depends on expansion at run time.
    pub dynamic: bool,
    pub args: Vec<String>,
}

/// Commands joined by `|`, in order.
pub type Pipeline = Vec<SimpleCommand>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command line could not be parsed: {0}")]
pub struct ShellParseError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word { text: String, dynamic: bool },
    Pipe,
    Sep,
    Redirect,
}

const MAX_DEPTH: usize = 8;
const MAX_LEN: usize = 256 * 1024;

pub fn parse(line: &str) -> Result<Vec<Pipeline>, ShellParseError> {
    parse_depth(line, 0)
}

fn parse_depth(line: &str, depth: usize) -> Result<Vec<Pipeline>, ShellParseError> {
    if depth > MAX_DEPTH {
        return Err(ShellParseError("nested too deeply".into()));
    }
    if line.len() > MAX_LEN {
        return Err(ShellParseError("command line too long".into()));
    }
    let mut nested: Vec<String> = Vec::new();
    let toks = tokenize(line, &mut nested)?;
    let mut out: Vec<Pipeline> = Vec::new();
    let mut pipeline: Pipeline = Vec::new();
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut skip_next_word = false;
    let flush_cmd = |words: &mut Vec<(String, bool)>,
                     pipeline: &mut Pipeline,
                     out: &mut Vec<Pipeline>|
     -> Result<(), ShellParseError> {
        if !words.is_empty() {
            for cmd in simple_commands(std::mem::take(words), depth)? {
                match cmd {
                    Expanded::Command(c) => pipeline.push(c),
                    Expanded::Nested(mut p) => out.append(&mut p),
                }
            }
        }
        Ok(())
    };
    for tok in toks {
        match tok {
            Tok::Word { text, dynamic } => {
                if skip_next_word {
                    skip_next_word = false;
                } else {
                    words.push((text, dynamic));
                }
            }
            Tok::Redirect => skip_next_word = true,
            Tok::Pipe => flush_cmd(&mut words, &mut pipeline, &mut out)?,
            Tok::Sep => {
                flush_cmd(&mut words, &mut pipeline, &mut out)?;
                if !pipeline.is_empty() {
                    out.push(std::mem::take(&mut pipeline));
                }
            }
        }
    }
    flush_cmd(&mut words, &mut pipeline, &mut out)?;
    if !pipeline.is_empty() {
        out.push(pipeline);
    }
    for inner in nested {
        out.extend(parse_depth(&inner, depth + 1)?);
    }
    Ok(out)
}

fn tokenize(line: &str, nested: &mut Vec<String>) -> Result<Vec<Tok>, ShellParseError> {
    let chars: Vec<char> = line.chars().collect();
    let mut toks = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut dynamic = false;
    let mut i = 0;
    let push_word =
        |toks: &mut Vec<Tok>, word: &mut String, in_word: &mut bool, dynamic: &mut bool| {
            if *in_word {
                toks.push(Tok::Word {
                    text: std::mem::take(word),
                    dynamic: *dynamic,
                });
            }
            *in_word = false;
            *dynamic = false;
        };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                push_word(&mut toks, &mut word, &mut in_word, &mut dynamic);
                i += 1;
            }
            '\n' | ';' | '(' | ')' | '{' | '}'
                if !in_word || c == '\n' || c == ';' || c == '(' || c == ')' =>
            {
                push_word(&mut toks, &mut word, &mut in_word, &mut dynamic);
                toks.push(Tok::Sep);
                i += 1;
            }
            '|' | '&' => {
                push_word(&mut toks, &mut word, &mut in_word, &mut dynamic);
                let doubled = chars.get(i + 1) == Some(&c);
                if c == '&' && chars.get(i + 1) == Some(&'>') {
                    toks.push(Tok::Redirect);
                    i += 2;
                    continue;
                }
                toks.push(if c == '|' && !doubled {
                    Tok::Pipe
                } else {
                    Tok::Sep
                });
                i += if doubled { 2 } else { 1 };
            }
            '<' | '>' => {
                // A redirection: `2>` (fd digits already in the word), `>>`, `>&2`, `<<<`.
                if in_word && word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                push_word(&mut toks, &mut word, &mut in_word, &mut dynamic);
                i += 1;
                while i < chars.len() && matches!(chars[i], '<' | '>' | '|') {
                    i += 1;
                }
                if chars.get(i) == Some(&'&') {
                    // `>&2`: the target is a descriptor, not a word to skip.
                    i += 1;
                    while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '-') {
                        i += 1;
                    }
                    continue;
                }
                toks.push(Tok::Redirect);
            }
            '\'' => {
                in_word = true;
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(ShellParseError("unterminated single quote".into()));
                }
                word.extend(&chars[start..i]);
                i += 1;
            }
            '"' => {
                in_word = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(ShellParseError("unterminated double quote".into())),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\')
                            if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`' | '\n')) =>
                        {
                            if let Some(n) = chars.get(i + 1) {
                                word.push(*n);
                            }
                            i += 2;
                        }
                        Some('$') | Some('`') => {
                            i = substitution(&chars, i, nested, &mut word, &mut dynamic)?;
                        }
                        Some(ch) => {
                            word.push(*ch);
                            i += 1;
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.get(i + 1)
                    && *n != '\n'
                {
                    word.push(*n);
                }
                i += 2;
            }
            '$' | '`' => {
                in_word = true;
                i = substitution(&chars, i, nested, &mut word, &mut dynamic)?;
            }
            '*' | '?' | '[' => {
                in_word = true;
                dynamic = true;
                word.push(c);
                i += 1;
            }
            '#' if !in_word => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            _ => {
                in_word = true;
                word.push(c);
                i += 1;
            }
        }
    }
    push_word(&mut toks, &mut word, &mut in_word, &mut dynamic);
    Ok(toks)
}

/// Handles `$VAR`, `${VAR}`, `$(cmd)`, `$((expr))` and `` `cmd` `` at `i`: the word
/// becomes dynamic, and command substitutions are queued for parsing.
fn substitution(
    chars: &[char],
    mut i: usize,
    nested: &mut Vec<String>,
    word: &mut String,
    dynamic: &mut bool,
) -> Result<usize, ShellParseError> {
    *dynamic = true;
    word.push('$');
    if chars[i] == '`' {
        let start = i + 1;
        i = start;
        while i < chars.len() && chars[i] != '`' {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        if i >= chars.len() {
            return Err(ShellParseError("unterminated backtick".into()));
        }
        nested.push(chars[start..i].iter().collect());
        return Ok(i + 1);
    }
    match chars.get(i + 1) {
        Some('(') => {
            let start = i + 2;
            let mut depth = 1;
            i = start;
            while i < chars.len() {
                match chars[i] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    '\\' => i += 1,
                    _ => {}
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err(ShellParseError("unterminated $(".into()));
            }
            let inner: String = chars[start..i].iter().collect();
            if !inner.starts_with('(') {
                nested.push(inner);
            }
            Ok(i + 1)
        }
        Some('{') => {
            while i < chars.len() && chars[i] != '}' {
                i += 1;
            }
            if i >= chars.len() {
                return Err(ShellParseError("unterminated ${".into()));
            }
            Ok(i + 1)
        }
        _ => {
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || matches!(chars[i], '_' | '@' | '*' | '#' | '?' | '!' | '-'))
            {
                i += 1;
                if !chars[i - 1].is_ascii_alphanumeric() && chars[i - 1] != '_' {
                    break;
                }
            }
            Ok(i)
        }
    }
}

enum Expanded {
    Command(SimpleCommand),
    Nested(Vec<Pipeline>),
}

/// Wrapper programs that run their arguments as a command, and which of their
/// options take a value.
fn wrapper_options_with_value(program: &str) -> Option<&'static [&'static str]> {
    Some(match program {
        "sudo" => &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-R"],
        "doas" => &["-u", "-C"],
        "env" => &["-u", "-C", "-S"],
        "nice" => &["-n"],
        "ionice" => &["-c", "-n", "-p"],
        "timeout" => &["-s", "-k"],
        "xargs" => &["-n", "-I", "-L", "-P", "-d", "-s", "-E", "-a"],
        "stdbuf" => &["-i", "-o", "-e"],
        "watch" => &["-n", "-d"],
        "nohup" | "time" | "command" | "exec" | "setsid" | "unbuffer" | "busybox" | "chrt"
        | "taskset" => &[],
        _ => return None,
    })
}

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish"];

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn simple_commands(
    mut words: Vec<(String, bool)>,
    depth: usize,
) -> Result<Vec<Expanded>, ShellParseError> {
    // Leading `NAME=value` assignments.
    while words.first().is_some_and(|(w, _)| is_assignment(w)) {
        words.remove(0);
    }
    let Some((first, dynamic)) = words.first().cloned() else {
        return Ok(Vec::new());
    };
    let program = basename(&first).to_string();
    if let Some(with_value) = wrapper_options_with_value(&program) {
        let mut rest = &words[1..];
        while let Some((w, _)) = rest.first() {
            if w == "--" {
                rest = &rest[1..];
                break;
            }
            if w.starts_with('-') || (program == "env" && is_assignment(w)) {
                let takes_value = with_value.contains(&w.as_str());
                rest = &rest[if takes_value { 2.min(rest.len()) } else { 1 }..];
            } else {
                break;
            }
        }
        if program == "timeout" && !rest.is_empty() {
            rest = &rest[1..]; // the duration
        }
        let mut out = vec![Expanded::Command(SimpleCommand {
            program,
            dynamic,
            args: words[1..].iter().map(|(w, _)| w.clone()).collect(),
        })];
        out.extend(simple_commands(rest.to_vec(), depth)?);
        return Ok(out);
    }
    let args: Vec<String> = words[1..].iter().map(|(w, _)| w.clone()).collect();
    let mut out = Vec::new();
    if SHELLS.contains(&program.as_str()) {
        if let Some(pos) = args
            .iter()
            .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))
            && let Some(script) = args.get(pos + 1)
        {
            out.push(Expanded::Nested(parse_depth(script, depth + 1)?));
        }
    } else if program == "eval" {
        out.push(Expanded::Nested(parse_depth(&args.join(" "), depth + 1)?));
    }
    out.insert(
        0,
        Expanded::Command(SimpleCommand {
            program,
            dynamic,
            args,
        }),
    );
    Ok(out)
}

fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Splits combined short flags (`-rf` is `-r -f`) and maps the GNU long forms of the
/// most common ones, so patterns match however the flags are spelled.
pub fn expand_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() * 2);
    for a in args {
        if a.len() > 2
            && a.starts_with('-')
            && !a.starts_with("--")
            && a[1..].chars().all(|c| c.is_ascii_alphabetic())
        {
            out.extend(a[1..].chars().map(|c| format!("-{c}")));
        } else {
            match a.as_str() {
                "--recursive" => out.push("-r".into()),
                "--force" => out.push("-f".into()),
                _ => out.push(normalize_path_arg(a)),
            }
        }
        out.push(a.clone());
    }
    out
}

/// `//`, `/./` and trailing slashes make no difference to the target of a path, and
/// a trailing `/*` (which the shell expands to everything inside) targets the
/// directory itself.
fn normalize_path_arg(a: &str) -> String {
    if !a.starts_with('/') {
        return a.to_string();
    }
    let mut parts: Vec<&str> = a
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.last() == Some(&"*") {
        parts.pop();
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(line: &str) -> Vec<Vec<String>> {
        parse(line)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.into_iter().map(|c| c.program).collect())
            .collect()
    }

    #[test]
    fn splits_and_unquotes() {
        assert_eq!(
            programs("ls -la | grep x; 'r'm -rf / && echo ok"),
            [vec!["ls", "grep"], vec!["rm"], vec!["echo"]]
        );
        assert_eq!(programs("sudo -u root /bin/rm -rf /"), [vec!["sudo", "rm"]]);
        assert_eq!(
            programs("FOO=1 env -i X=2 nice -n 5 rm x"),
            [vec!["env", "nice", "rm"]]
        );
        assert_eq!(
            programs("bash -c 'curl x | sh'"),
            [vec!["curl", "sh"], vec!["bash"]]
        );
        assert_eq!(programs("echo $(rm -rf /)"), [vec!["echo"], vec!["rm"]]);
        assert_eq!(programs("cat f > /dev/null 2>&1"), [vec!["cat"]]);
        assert!(parse("echo 'unterminated").is_err());
        let c = parse("$CMD -rf /").unwrap_or_default();
        assert!(c[0][0].dynamic);
    }

    #[test]
    fn expands_flags() {
        let a = expand_args(&["-rf".into(), "--force".into(), "//".into()]);
        assert!(
            a.contains(&"-r".to_string())
                && a.contains(&"-f".to_string())
                && a.contains(&"/".to_string())
        );
    }
}
