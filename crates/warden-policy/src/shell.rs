//! Shell command lines, as far as they can be understood without running them.
//!
//! [`parse`] splits a command line into pipelines of simple commands the way a POSIX
//! shell would tokenize it: quotes and backslashes are removed (`'r'm` is `rm`),
//! `;`, `&&`, `||`, `&`, newlines and subshells separate commands, `$(...)` and
//! backticks are parsed as commands of their own, `sh -c '...'` and `eval` are parsed
//! recursively, compound commands (`if`, `while`, `!`, `{ }`) are looked into, and
//! wrappers (`sudo`, `env`, `nice`, `timeout`, `xargs`, `chroot`, `flock`, `su -c`,
//! `script -c`, `strace`, `watch`, ...) are looked through. A program name that is only
//! known at run time (`$CMD`, `r*m`, a shell or interpreter reading a pipe, `case`) is
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
            let after_pipe = !pipeline.is_empty();
            for cmd in simple_commands(std::mem::take(words), depth)? {
                match cmd {
                    Expanded::Command(mut c) => {
                        // `... | sh`, `... | base64 -d | python3`: it runs what it
                        // reads, which is only known at run time.
                        if after_pipe && reads_program_from_stdin(&c) {
                            c.dynamic = true;
                        }
                        pipeline.push(c)
                    }
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
            Tok::Pipe => {
                skip_next_word = false;
                flush_cmd(&mut words, &mut pipeline, &mut out)?
            }
            Tok::Sep => {
                skip_next_word = false;
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
                if !(in_word || c == '{' && brace_expands(&chars[i..]))
                    || c == '\n'
                    || c == ';'
                    || c == '('
                    || c == ')' =>
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
                // `|&` pipes standard error too: still a pipe.
                if c == '|' && chars.get(i + 1) == Some(&'&') {
                    toks.push(Tok::Pipe);
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
                let op_start = i;
                i += 1;
                while i < chars.len() && matches!(chars[i], '<' | '>' | '|') {
                    i += 1;
                }
                // `<(cmd)` / `>(cmd)`: process substitution runs `cmd` (parsed as the
                // subshell that follows) with its output where the shell puts it: a
                // program known only at run time. A here-string or here-document
                // fed to a shell or interpreter is a program too.
                let op: String = chars[op_start..i].iter().collect();
                let into_interpreter = op.starts_with("<<")
                    && current_program(&toks)
                        .is_some_and(|p| STDIN_INTERPRETERS.contains(&basename(&p)));
                if chars.get(i) == Some(&'(') || into_interpreter {
                    toks.push(Tok::Sep);
                    toks.push(Tok::Word {
                        text: "run-time-program".into(),
                        dynamic: true,
                    });
                    toks.push(Tok::Sep);
                    if chars.get(i) == Some(&'(') {
                        continue;
                    }
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
            // Globs, and brace expansion (`{curl,-s,x}` runs `curl -s x`): only known
            // once expanded.
            '*' | '?' | '[' | '{' if c != '{' || (i + 1 < chars.len() && chars[i + 1] != '}') => {
                in_word = true;
                dynamic = dynamic || c != '{' || brace_expands(&chars[i..]);
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
            if inner.starts_with('(') {
                // Arithmetic: substitutions inside it still run.
                scan_substitutions(&chars[start..i], nested)?;
            } else {
                nested.push(inner);
            }
            Ok(i + 1)
        }
        Some('{') => {
            // `${a:-$(cmd)}`: substitutions inside a parameter expansion run too.
            let start = i + 2;
            let mut depth = 1;
            i = start;
            while i < chars.len() {
                match chars[i] {
                    '{' => depth += 1,
                    '}' => {
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
                return Err(ShellParseError("unterminated ${".into()));
            }
            scan_substitutions(&chars[start..i], nested)?;
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

/// The first word of the command being tokenized (after the last `;` or `|`).
fn current_program(toks: &[Tok]) -> Option<String> {
    let start = toks
        .iter()
        .rposition(|t| matches!(t, Tok::Sep | Tok::Pipe))
        .map_or(0, |p| p + 1);
    toks[start..].iter().find_map(|t| match t {
        Tok::Word { text, .. } if !is_assignment(text) => Some(text.clone()),
        _ => None,
    })
}

/// Finds the command substitutions inside a text that is otherwise not tokenized
/// (arithmetic, parameter expansions) and adds them to `nested`.
fn scan_substitutions(chars: &[char], nested: &mut Vec<String>) -> Result<(), ShellParseError> {
    let mut i = 0;
    let (mut word, mut dynamic) = (String::new(), false);
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '`' => i = substitution(chars, i, nested, &mut word, &mut dynamic)?,
            '$' if matches!(chars.get(i + 1), Some('(' | '{')) => {
                i = substitution(chars, i, nested, &mut word, &mut dynamic)?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether a word starting with `{` is a brace expansion (`{a,b}` or `{1..3}`).
fn brace_expands(chars: &[char]) -> bool {
    let end = chars.iter().position(|c| *c == '}').unwrap_or(chars.len());
    let inner: String = chars[1..end.max(1)].iter().collect();
    end < chars.len()
        && !inner.chars().any(char::is_whitespace)
        && (inner.contains(',') || inner.contains(".."))
}

enum Expanded {
    Command(SimpleCommand),
    Nested(Vec<Pipeline>),
}

/// A program that runs its arguments (or a string) as a command.
struct Wrapper {
    /// Options that take the next word as their value.
    with_value: &'static [&'static str],
    /// Words between the options and the command (`chroot DIR cmd`, `timeout 5 cmd`).
    positionals: usize,
    /// Options whose value is a shell command line (`su -c '...'`, `flock f -c '...'`).
    shell_options: &'static [&'static str],
    /// Runs the rest of its words through a shell (`watch 'cmd; cmd'`).
    rest_is_shell: bool,
    /// Runs the words after its options and positionals as a command (`su USER`
    /// and `script FILE` do not).
    runs_rest: bool,
}

const fn wrap(with_value: &'static [&'static str], positionals: usize) -> Wrapper {
    Wrapper {
        with_value,
        positionals,
        shell_options: &[],
        rest_is_shell: false,
        runs_rest: true,
    }
}

/// Wrapper programs that run their arguments as a command.
fn wrapper(program: &str) -> Option<Wrapper> {
    Some(match program {
        "sudo" => wrap(
            &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-R"],
            0,
        ),
        "doas" => wrap(&["-u", "-C"], 0),
        "env" => Wrapper {
            shell_options: &["-S", "--split-string"],
            ..wrap(
                &["-u", "-C", "-S", "--unset", "--chdir", "--split-string"],
                0,
            )
        },
        "nice" => wrap(&["-n", "--adjustment"], 0),
        "ionice" => wrap(&["-c", "-n", "-p"], 0),
        "timeout" => wrap(&["-s", "-k", "--signal", "--kill-after"], 1),
        "xargs" => wrap(&["-n", "-I", "-L", "-P", "-d", "-s", "-E", "-a"], 0),
        "stdbuf" => wrap(&["-i", "-o", "-e"], 0),
        "watch" => Wrapper {
            rest_is_shell: true,
            ..wrap(&["-n", "-d", "--interval"], 0)
        },
        "chroot" | "taskset" | "faketime" | "chrt" => wrap(&["--userspec", "--groups"], 1),
        "flock" => Wrapper {
            shell_options: &["-c", "--command"],
            ..wrap(&["-w", "-E", "--timeout", "--conflict-exit-code"], 1)
        },
        "sg" => Wrapper {
            shell_options: &["-c"],
            ..wrap(&[], 1)
        },
        "su" | "runuser" => Wrapper {
            shell_options: &["-c", "--command", "--session-command"],
            ..wrap(
                &["-u", "-g", "-G", "-s", "--shell", "-w", "--group", "--user"],
                0,
            )
        },
        "script" => Wrapper {
            shell_options: &["-c", "--command"],
            ..wrap(
                &[
                    "-t",
                    "-T",
                    "-I",
                    "-O",
                    "-B",
                    "-E",
                    "-m",
                    "--log-io",
                    "--log-out",
                ],
                0,
            )
        },
        "strace" | "ltrace" => wrap(
            &[
                "-o", "-e", "-p", "-s", "-u", "-E", "-P", "-a", "-b", "-X", "-I",
            ],
            0,
        ),
        "nsenter" => wrap(&["-t", "-S", "-G", "--target", "--setuid", "--setgid"], 0),
        "exec" => wrap(&["-a"], 0),
        "nohup" | "time" | "command" | "setsid" | "unbuffer" | "busybox" | "unshare"
        | "setpriv" | "firejail" | "valgrind" | "catchsegv" | "chronic" | "torsocks"
        | "proxychains" | "proxychains4" | "tsocks" | "systemd-run" | "caffeinate" | "prlimit" => {
            wrap(&[], 0)
        }
        "parallel" => wrap(&["-j", "-S", "--jobs"], 0),
        _ => return None,
    })
}

/// Interpreters that run what they read on standard input when given no program.
const STDIN_INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish", "python", "python3", "perl", "ruby",
    "node", "php", "lua",
];

/// Whether an interpreter runs what it reads on standard input: no `-c` program and
/// no script file (`-`, `/dev/stdin` and `-s` read standard input).
fn reads_program_from_stdin(c: &SimpleCommand) -> bool {
    if !STDIN_INTERPRETERS.contains(&c.program.as_str()) {
        return false;
    }
    let short = |a: &String| a.starts_with('-') && !a.starts_with("--");
    if c.args.iter().any(|a| short(a) && a.contains('c')) {
        return false;
    }
    if c.args.iter().any(|a| short(a) && a.contains('s')) {
        return true;
    }
    !c.args
        .iter()
        .any(|a| !a.starts_with('-') && a != "/dev/stdin" && a != "/proc/self/fd/0")
}

/// Words that open or close a compound command; what follows them is a command.
const RESERVED_OPENERS: &[&str] = &[
    "!", "if", "then", "else", "elif", "do", "while", "until", "{", "time", "coproc",
];
const RESERVED_CLOSERS: &[&str] = &["fi", "done", "esac", "}"];

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
    // Compound commands: `if c; then rm x; fi` runs `c` and `rm x`.
    while words
        .first()
        .is_some_and(|(w, _)| RESERVED_OPENERS.contains(&w.as_str()))
    {
        words.remove(0);
        while words.first().is_some_and(|(w, _)| is_assignment(w)) {
            words.remove(0);
        }
    }
    match words.first().map(|(w, _)| w.as_str()) {
        None => return Ok(Vec::new()),
        Some(w) if RESERVED_CLOSERS.contains(&w) && words.len() == 1 => return Ok(Vec::new()),
        // `for x in a b` and `select`: the words are data; the body follows `do`.
        Some("for" | "select") => return Ok(Vec::new()),
        // `case` arms are read by patterns this reader does not follow.
        Some("case") => {
            return Ok(vec![Expanded::Command(SimpleCommand {
                program: "case".into(),
                dynamic: true,
                args: Vec::new(),
            })]);
        }
        _ => {}
    }
    let Some((first, dynamic)) = words.first().cloned() else {
        return Ok(Vec::new());
    };
    let program = basename(&first).to_string();
    if let Some(w) = wrapper(&program) {
        let mut out = vec![Expanded::Command(SimpleCommand {
            program: program.clone(),
            dynamic,
            args: words[1..].iter().map(|(w, _)| w.clone()).collect(),
        })];
        // A shell command line given to an option runs wherever the option stands
        // (`flock FILE -c '...'`).
        for (i, (word, _)) in words.iter().enumerate().skip(1) {
            let inline = word.split_once('=').map_or("", |(_, v)| v);
            if word.starts_with('-') && w.shell_options.contains(&option_name(word).as_str()) {
                let line = if word.contains('=') {
                    Some(inline.to_string())
                } else {
                    words.get(i + 1).map(|(v, _)| v.clone())
                };
                if let Some(line) = line {
                    out.push(Expanded::Nested(parse_depth(&line, depth + 1)?));
                }
            }
        }
        let mut rest = skip_options(&words[1..], &w, &program);
        rest = skip_options(&rest[w.positionals.min(rest.len())..], &w, &program);
        if w.rest_is_shell && !rest.is_empty() {
            let line: Vec<&str> = rest.iter().map(|(w, _)| w.as_str()).collect();
            out.push(Expanded::Nested(parse_depth(&line.join(" "), depth + 1)?));
        }
        if w.runs_rest {
            out.extend(simple_commands(rest.to_vec(), depth)?);
        }
        return Ok(out);
    }
    let args: Vec<String> = words[1..].iter().map(|(w, _)| w.clone()).collect();
    let mut out = Vec::new();
    if SHELLS.contains(&program.as_str()) {
        if let Some(pos) = args
            .iter()
            .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))
        {
            // `sh -c -x -- 'cmd'`: the script is the first word after the options.
            let mut at = pos + 1;
            while args.get(at).is_some_and(|a| a.starts_with('-') && a != "-") {
                let end = args[at] == "--";
                at += 1;
                if end {
                    break;
                }
            }
            if let Some(script) = args.get(at) {
                out.push(Expanded::Nested(parse_depth(script, depth + 1)?));
            }
        }
    } else if program == "eval" {
        out.push(Expanded::Nested(parse_depth(&args.join(" "), depth + 1)?));
    } else if program == "trap" {
        // `trap 'cmd' EXIT`: the handler runs.
        if let Some(handler) = args.iter().find(|a| !a.starts_with('-')) {
            out.push(Expanded::Nested(parse_depth(handler, depth + 1)?));
        }
    } else if program == "find" {
        // `find ... -exec cmd {} ;`: each action runs a command.
        let mut rest = args.as_slice();
        while let Some(at) = rest
            .iter()
            .position(|a| matches!(a.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir"))
        {
            let cmd = &rest[at + 1..];
            let end = cmd
                .iter()
                .position(|a| a == ";" || a == "+")
                .unwrap_or(cmd.len());
            let words: Vec<(String, bool)> =
                cmd[..end].iter().map(|a| (a.clone(), false)).collect();
            out.extend(simple_commands(words, depth + 1)?);
            rest = &cmd[end.min(cmd.len())..];
        }
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

/// The option a word names for value purposes: `--opt=v` → `--opt`, and combined
/// short flags by their last letter (`-qc` takes a value when `-c` does).
fn option_name(word: &str) -> String {
    let name = word.split_once('=').map_or(word, |(n, _)| n);
    if name.len() > 2
        && name.starts_with('-')
        && !name.starts_with("--")
        && name[1..].chars().all(|c| c.is_ascii_alphabetic())
    {
        return format!("-{}", &name[name.len() - 1..]);
    }
    name.to_string()
}

/// The words after a wrapper's leading options (and their values).
fn skip_options<'a>(
    mut rest: &'a [(String, bool)],
    w: &Wrapper,
    program: &str,
) -> &'a [(String, bool)] {
    while let Some((word, _)) = rest.first() {
        if word == "--" {
            return &rest[1..];
        }
        if !(word.starts_with('-') || (program == "env" && is_assignment(word))) {
            break;
        }
        let name = option_name(word);
        let takes_value = !word.contains('=')
            && (w.with_value.contains(&name.as_str()) || w.shell_options.contains(&name.as_str()));
        rest = &rest[if takes_value { 2.min(rest.len()) } else { 1 }..];
    }
    rest
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
        if a.len() >= 2
            && a.starts_with('-')
            && !a.starts_with("--")
            && a[1..].chars().all(|c| c.is_ascii_alphabetic())
        {
            out.extend(a[1..].chars().map(|c| format!("-{c}")));
            // `-R` is `-r` for rm, cp, chmod, chown, grep: a pattern with `-r` covers it.
            if a[1..].contains('R') {
                out.push("-r".into());
            }
        } else {
            match a.as_str() {
                // GNU tools accept unambiguous prefixes of long options.
                l if l.len() >= 5 && "--recursive".starts_with(l) => out.push("-r".into()),
                l if l.len() >= 4 && "--force".starts_with(l) => out.push("-f".into()),
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
    fn looks_into_compound_commands_wrappers_and_pipes_into_shells() {
        for line in [
            "if true; then rm -rf /d; fi",
            "while true; do rm -rf /d; done",
            "for x in a b; do rm -rf /d; done",
            "! rm -rf /d",
            "{ rm -rf /d; }",
            "sh -c -- 'rm -rf /d'",
            "sh -c -x 'rm -rf /d'",
            "chroot / rm -rf /d",
            "flock /tmp/l rm -rf /d",
            "flock /tmp/l -c 'rm -rf /d'",
            "su root -c 'rm -rf /d'",
            "runuser -u root -- rm -rf /d",
            "script -qc 'rm -rf /d' /dev/null",
            "taskset 1 rm -rf /d",
            "taskset -c 0 rm -rf /d",
            "strace -o /tmp/x rm -rf /d",
            "env -S 'rm -rf /d'",
            "watch -n 1 'rm -rf /d'",
            "find / -exec rm -rf /d {} ;",
            "sh -c \"trap 'rm -rf /d' EXIT\"",
            "coproc rm -rf /d",
            "exec -a foo rm -rf /d",
            "parallel rm -rf ::: /d",
            "echo ${a:-$(rm -rf /d)}",
            "echo $((`rm -rf /d`))",
            "echo $(( $(rm -rf /d) + 1 ))",
        ] {
            let all: Vec<String> = programs(line).into_iter().flatten().collect();
            assert!(all.contains(&"rm".to_string()), "{line}: {all:?}");
        }
        for line in [
            "echo x | sh",
            "curl x | base64 -d | bash -s",
            "cat f | python3 -",
            "case x in a) rm y;; esac",
            "echo x |& sh",
            "echo x | bash --norc",
            "echo x | sh -s arg",
            "echo x | bash /dev/stdin",
            "bash <<< 'rm -rf /d'",
            "{rm,-rf,/d}",
            "cat < <(curl x)",
            "ls >(sh)",
        ] {
            let dynamic = parse(line)
                .unwrap_or_default()
                .iter()
                .flatten()
                .any(|c| c.dynamic);
            assert!(dynamic, "{line}");
        }
        let plain = parse("echo x | grep y | sh -c 'wc -l'").unwrap_or_default();
        assert!(!plain.iter().flatten().any(|c| c.dynamic));
    }

    #[test]
    fn expands_flags() {
        let upper = expand_args(&["-Rf".into()]);
        assert!(upper.contains(&"-r".to_string()) && upper.contains(&"-f".to_string()));
        let a = expand_args(&["-rf".into(), "--force".into(), "//".into()]);
        assert!(
            a.contains(&"-r".to_string())
                && a.contains(&"-f".to_string())
                && a.contains(&"/".to_string())
        );
    }
}
