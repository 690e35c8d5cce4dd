//! `sh -c SCRIPT` (or a script on stdin): just enough shell for the one-liners tests and
//! probes write — words with '…' and "…" quoting and backslash escapes, `$VAR`,
//! `${VAR}` and `$?`, commands separated by `;`, newlines, `&&` and `||`, stdout
//! redirected with `>` or `>>`, `#` comments. Every command is a toolbox tool; there are
//! no pipes, no globbing and no subshells.

use std::fs;
use std::io::{self, Read, Write};

/// One piece of a word: literal text, or a variable expanded when the command runs (so
/// `$?` sees the status of the command before it).
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(String),
}

type Word = Vec<Part>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    /// `;` or a newline: run the next command whatever happened.
    Seq,
    /// `&&`: run the next command only after a success.
    And,
    /// `||`: run the next command only after a failure.
    Or,
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(Word),
    Op(Op),
    /// `>` (false) or `>>` (true).
    Redirect(bool),
}

#[derive(Debug, Default)]
struct Command {
    words: Vec<Word>,
    /// Where stdout goes, and whether to append.
    redirect: Option<(Word, bool)>,
}

/// Runs `sh [-c SCRIPT]`; returns the status of the last command run (or the `exit`
/// code).
pub fn sh(args: &[String], out: &mut dyn Write) -> i32 {
    let script = match args.first().map(String::as_str) {
        Some("-c") => match args.get(1) {
            Some(s) => s.clone(),
            None => {
                eprintln!("sh: -c: option requires an argument");
                return 2;
            }
        },
        Some(other) => {
            eprintln!("sh: {other}: only `sh -c SCRIPT` or a script on stdin is supported");
            return 2;
        }
        None => {
            let mut text = String::new();
            if let Err(e) = io::stdin().lock().read_to_string(&mut text) {
                eprintln!("sh: reading stdin: {e}");
                return 2;
            }
            text
        }
    };
    match parse(&script) {
        Ok(commands) => execute(&commands, out),
        Err(e) => {
            eprintln!("sh: {e}");
            2
        }
    }
}

fn execute(commands: &[(Op, Command)], out: &mut dyn Write) -> i32 {
    let mut status = 0;
    for (op, cmd) in commands {
        let skip = match op {
            Op::Seq => false,
            Op::And => status != 0,
            Op::Or => status == 0,
        };
        if skip {
            continue;
        }
        let words: Vec<String> = cmd.words.iter().map(|w| expand(w, status)).collect();
        let Some((name, rest)) = words.split_first() else {
            continue;
        };
        let name = crate::tool_name(name);
        if name == "exit" {
            let _ = out.flush();
            return crate::run_tool(name, rest, out);
        }
        status = match &cmd.redirect {
            None => crate::run_tool(name, rest, out),
            Some((target, append)) => {
                let path = expand(target, status);
                let opened = fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(&path);
                match opened {
                    Ok(mut file) => crate::run_tool(name, rest, &mut file),
                    Err(e) => {
                        eprintln!("sh: {path}: {e}");
                        1
                    }
                }
            }
        };
    }
    status
}

fn expand(word: &Word, status: i32) -> String {
    word.iter()
        .map(|p| match p {
            Part::Lit(s) => s.clone(),
            Part::Var(v) if v == "?" => status.to_string(),
            Part::Var(v) => std::env::var(v).unwrap_or_default(),
        })
        .collect()
}

/// Parses a script into commands, each with the operator that joins it to the previous
/// one.
fn parse(script: &str) -> Result<Vec<(Op, Command)>, String> {
    let mut commands = Vec::new();
    let mut op = Op::Seq;
    let mut cmd = Command::default();
    let mut tokens = tokenize(script)?.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            Token::Word(w) => cmd.words.push(w),
            Token::Redirect(append) => match tokens.next() {
                Some(Token::Word(target)) => cmd.redirect = Some((target, append)),
                _ => return Err("redirection without a file name".to_string()),
            },
            Token::Op(next) => {
                if cmd.words.is_empty() {
                    if next == Op::Seq {
                        continue;
                    }
                    return Err("syntax error near && or ||".to_string());
                }
                commands.push((op, std::mem::take(&mut cmd)));
                op = next;
            }
        }
    }
    if !cmd.words.is_empty() {
        commands.push((op, cmd));
    } else if op != Op::Seq {
        return Err("script ends with && or ||".to_string());
    }
    Ok(commands)
}

fn tokenize(script: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut word: Option<Word> = None;
    let mut chars = script.chars().peekable();

    fn push_lit(word: &mut Option<Word>, c: char) {
        let w = word.get_or_insert_with(Vec::new);
        match w.last_mut() {
            Some(Part::Lit(s)) => s.push(c),
            _ => w.push(Part::Lit(c.to_string())),
        }
    }
    // After `$`: a name, `{name}` or `?`; a lone `$` stays literal.
    fn read_var(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        word: &mut Option<Word>,
    ) -> Result<(), String> {
        match chars.peek() {
            Some('{') => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err("unterminated ${".to_string()),
                    }
                }
                word.get_or_insert_with(Vec::new).push(Part::Var(name));
            }
            Some('?') => {
                chars.next();
                word.get_or_insert_with(Vec::new)
                    .push(Part::Var("?".to_string()));
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || *c == '_' {
                        name.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                word.get_or_insert_with(Vec::new).push(Part::Var(name));
            }
            _ => push_lit(word, '$'),
        }
        Ok(())
    }

    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    tokens.push(Token::Word(w));
                }
            }
            '\n' | ';' | '&' | '|' | '>' => {
                if let Some(w) = word.take() {
                    tokens.push(Token::Word(w));
                }
                let token = match (c, chars.peek()) {
                    ('&', Some('&')) => Token::Op(Op::And),
                    ('|', Some('|')) => Token::Op(Op::Or),
                    ('>', Some('>')) => Token::Redirect(true),
                    ('>', _) => Token::Redirect(false),
                    ('\n' | ';', _) => Token::Op(Op::Seq),
                    _ => return Err(format!("`{c}` is not supported (no pipes or jobs)")),
                };
                if matches!(token, Token::Op(Op::And | Op::Or) | Token::Redirect(true)) {
                    chars.next();
                }
                tokens.push(token);
            }
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        tokens.push(Token::Op(Op::Seq));
                        break;
                    }
                }
            }
            '\'' => {
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => push_lit(&mut word, c),
                        None => return Err("unterminated '".to_string()),
                    }
                }
            }
            '"' => {
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$')) => push_lit(&mut word, e),
                            Some(other) => {
                                push_lit(&mut word, '\\');
                                push_lit(&mut word, other);
                            }
                            None => return Err("unterminated \"".to_string()),
                        },
                        Some('$') => read_var(&mut chars, &mut word)?,
                        Some(c) => push_lit(&mut word, c),
                        None => return Err("unterminated \"".to_string()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(e) => push_lit(&mut word, e),
            },
            '$' => read_var(&mut chars, &mut word)?,
            c => push_lit(&mut word, c),
        }
    }
    if let Some(w) = word.take() {
        tokens.push(Token::Word(w));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> (i32, String) {
        let mut out = Vec::new();
        let code = sh(&["-c".to_string(), script.to_string()], &mut out);
        (code, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn quoting_and_variables() {
        std::env::set_var("TOOLBOX_SH_TEST", "v a l");
        assert_eq!(
            run(r#"echo 'a  $X' "b $TOOLBOX_SH_TEST" ${TOOLBOX_SH_TEST}x c\ d"#),
            (0, "a  $X b v a l v a lx c d\n".to_string())
        );
        assert_eq!(run("echo \"cost \\$5\" $"), (0, "cost $5 $\n".to_string()));
    }

    #[test]
    fn sequencing_and_status() {
        assert_eq!(run("false; echo $?"), (0, "1\n".to_string()));
        assert_eq!(
            run("false && echo no || echo yes"),
            (0, "yes\n".to_string())
        );
        assert_eq!(
            run("true && echo a\necho b # comment"),
            (0, "a\nb\n".to_string())
        );
        assert_eq!(run("echo x; exit 4; echo y"), (4, "x\n".to_string()));
        assert_eq!(run("test -d /no/such && echo y").0, 1);
        assert_eq!(run("echo a | cat").0, 2);
        assert_eq!(run("echo 'open").0, 2);
        assert_eq!(run("nosuchtool").0, 127);
    }

    #[test]
    fn redirects_stdout() {
        let dir = std::env::temp_dir().join(format!("toolbox-sh-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("out.txt");
        let f = f.to_str().unwrap();
        assert_eq!(run(&format!("echo one > {f}; echo two >>{f}")).0, 0);
        assert_eq!(run(&format!("cat {f}")), (0, "one\ntwo\n".to_string()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
