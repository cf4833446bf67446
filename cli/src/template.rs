//! Templated job specs, as `bacalhau job run` reads them (its `pkg/lib/template`): the spec is a Go
//! `text/template` whose data is a map of the `-V/--template-vars key=value` pairs and of the
//! environment variables whose names match `-E/--template-envs REGEX` (unanchored, as Go's
//! `MatchString`; `*` means all; `-V` wins), rendered with `missingkey=error` and no extra
//! functions. `--no-template` sends the text as it is.
//!
//! The language rendered here is Go's, minus what a map of strings cannot use:
//!
//! ```text
//! {{ .key }}  {{ index . "a-key" }}  {{ $ }}  {{ "literal" }}  {{ `raw` }}  {{ 3 }}  {{ true }}
//! {{- trims the space before   -}} trims the space after   {{/* a comment */}}
//! {{ if PIPELINE }} … {{ else if PIPELINE }} … {{ else }} … {{ end }}
//! {{ with PIPELINE }} … {{ . }} … {{ else }} … {{ end }}
//! {{ $v := PIPELINE }} … {{ $v }}           {{ $v = PIPELINE }}
//! PIPELINE = COMMAND | COMMAND …             (the value before `|` is the last argument)
//! functions: and or not eq ne lt le gt ge len index print printf println html js urlquery
//! ```
//! `range`, `define`, `template`, `block`, `break` and `continue` are refused by name, as is any
//! unknown function.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};

/// The template's data: `-V` pairs over matching environment variables (`-V` wins).
pub fn template_data(
    vars: &[String],
    env_pattern: Option<&str>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    if let Some(p) = env_pattern.filter(|p| !p.is_empty()) {
        let p = if p == "*" { ".*" } else { p };
        let re = regex::Regex::new(p)
            .with_context(|| format!("--template-envs {p:?} is not a regular expression"))?;
        for (k, v) in env.filter(|(k, _)| re.is_match(k)) {
            data.insert(k, v);
        }
    }
    for kv in vars.iter().flat_map(|v| v.split(',')) {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                data.insert(k.trim().to_string(), v.to_string());
            }
            _ => bail!("--template-vars {kv:?}: write key=value"),
        }
    }
    Ok(data)
}

/// Renders `text` with `data`; a key that is not in `data` is an error naming it (and the line).
pub fn render(text: &str, data: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let items = split(text)?;
    let mut pos = 0;
    let (nodes, stop) = parse_list(&items, &mut pos)?;
    if let Some((word, line)) = stop {
        bail!("line {line}: unexpected {{{{ {word} }}}}: no if or with is open");
    }
    let mut out = String::with_capacity(text.len());
    let root = Value::Map(data);
    let mut vars = vec![("$".to_string(), root.clone())];
    exec(&nodes, &root, &mut vars, &mut out)?;
    Ok(out)
}

/// A piece of the text: literal text, or an action's source and the line it starts on.
enum Item<'a> {
    Text(&'a str),
    Action(&'a str, usize),
}

/// Splits the text at its actions, applying the `{{-` / `-}}` trim markers.
fn split(text: &str) -> anyhow::Result<Vec<Item<'_>>> {
    let mut items = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let line = text[..text.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start();
        }
        let after = &rest[start + 2..];
        let trim_left =
            after.starts_with("- ") || after.starts_with("-\n") || after.starts_with("-\t");
        let body_start = if trim_left { 1 } else { 0 };
        // A comment may hold `}}`; it ends at `*/}}` (or `*/ -}}`).
        let end = if after[body_start..].trim_start().starts_with("/*") {
            after
                .find("*/")
                .and_then(|c| after[c..].find("}}").map(|e| c + e))
        } else {
            find_close(after)
        }
        .with_context(|| {
            format!("line {line}: a template action opened with {{{{ is never closed with }}}}; use --no-template to send the spec as it is")
        })?;
        let mut body = &after[body_start..end];
        let trim_right = body.ends_with(" -") || body.ends_with("\n-") || body.ends_with("\t-");
        if trim_right {
            body = &body[..body.len() - 1];
        }
        if trim_left {
            before = before.trim_end();
        }
        if !before.is_empty() {
            items.push(Item::Text(before));
        }
        items.push(Item::Action(body.trim(), line));
        trim_next = trim_right;
        rest = &after[end + 2..];
    }
    if trim_next {
        rest = rest.trim_start();
    }
    if !rest.is_empty() {
        items.push(Item::Text(rest));
    }
    Ok(items)
}

/// The `}}` closing an action, skipping over quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `.a.b` (empty: `.`).
    Field(Vec<String>),
    /// `$name.a.b` (`$` alone: name `$`).
    Var(String, Vec<String>),
    Str(String),
    Int(i64),
    Ident(String),
    Open,
    Close,
    Pipe,
    Declare,
    Assign,
}

fn tokenize(src: &str, line: usize) -> anyhow::Result<Vec<Tok>> {
    let err = |what: String| anyhow!("line {line}: {what} in {{{{ {src} }}}}");
    let c: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let word = |i: &mut usize| {
        let s = *i;
        while *i < c.len() && (c[*i].is_alphanumeric() || c[*i] == '_') {
            *i += 1;
        }
        c[s..*i].iter().collect::<String>()
    };
    let fields = |i: &mut usize| {
        let mut out = Vec::new();
        while *i < c.len() && c[*i] == '.' {
            *i += 1;
            let w = word(i);
            if w.is_empty() {
                break;
            }
            out.push(w);
        }
        out
    };
    while i < c.len() {
        match c[i] {
            ch if ch.is_whitespace() => i += 1,
            '(' => {
                toks.push(Tok::Open);
                i += 1
            }
            ')' => {
                toks.push(Tok::Close);
                i += 1
            }
            '|' => {
                toks.push(Tok::Pipe);
                i += 1
            }
            ':' if c.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1
            }
            '.' => {
                let f = fields(&mut i);
                toks.push(Tok::Field(f));
            }
            '$' => {
                i += 1;
                let name = word(&mut i);
                let f = fields(&mut i);
                toks.push(Tok::Var(
                    if name.is_empty() {
                        "$".into()
                    } else {
                        format!("${name}")
                    },
                    f,
                ));
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match c.get(i) {
                        None => return Err(err("an unterminated string".into())),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            s.push(match c.get(i) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('r') => '\r',
                                Some('\\') => '\\',
                                Some('"') => '"',
                                Some(o) => return Err(err(format!("the escape \\{o}"))),
                                None => return Err(err("an unterminated string".into())),
                            });
                        }
                        Some(ch) => s.push(*ch),
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(s));
            }
            '`' => {
                let s = i + 1;
                i = s;
                while i < c.len() && c[i] != '`' {
                    i += 1;
                }
                if i == c.len() {
                    return Err(err("an unterminated raw string".into()));
                }
                toks.push(Tok::Str(c[s..i].iter().collect()));
                i += 1;
            }
            ch if ch.is_ascii_digit() || ch == '-' => {
                let s = i;
                i += 1;
                while i < c.len() && c[i].is_ascii_digit() {
                    i += 1;
                }
                let n: String = c[s..i].iter().collect();
                toks.push(Tok::Int(
                    n.parse().map_err(|_| err(format!("the number {n:?}")))?,
                ));
            }
            ch if ch.is_alphabetic() || ch == '_' => {
                let w = word(&mut i);
                toks.push(Tok::Ident(w));
            }
            other => return Err(err(format!("the character {other:?}"))),
        }
    }
    Ok(toks)
}

/// Go's built-in template functions that apply to strings, numbers and booleans.
const FUNCTIONS: &[&str] = &[
    "and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "print", "printf",
    "println", "html", "js", "urlquery",
];

#[derive(Debug, Clone)]
enum Arg {
    Field(Vec<String>),
    Var(String, Vec<String>),
    Lit(Value<'static>),
    Func(String),
    Sub(Pipeline),
}

#[derive(Debug, Clone)]
struct Pipeline {
    /// `$x :=` (true) or `$x =` (false).
    bind: Option<(String, bool)>,
    cmds: Vec<Vec<Arg>>,
    line: usize,
}

enum Node {
    Text(String),
    Out(Pipeline),
    If(Vec<(Pipeline, Vec<Node>)>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
}

fn parse_pipeline(toks: &[Tok], line: usize, src: &str) -> anyhow::Result<Pipeline> {
    let err = |what: &str| anyhow!("line {line}: {what} in {{{{ {src} }}}}");
    let (bind, toks) = match toks {
        [Tok::Var(v, f), Tok::Declare, rest @ ..] if f.is_empty() => {
            (Some((v.clone(), true)), rest)
        }
        [Tok::Var(v, f), Tok::Assign, rest @ ..] if f.is_empty() => {
            (Some((v.clone(), false)), rest)
        }
        _ => (None, toks),
    };
    let mut pos = 0;
    let p = parse_cmds(toks, &mut pos, line, src)?;
    if pos != toks.len() {
        return Err(err("an unexpected )"));
    }
    Ok(Pipeline { bind, ..p })
}

fn parse_cmds(toks: &[Tok], pos: &mut usize, line: usize, src: &str) -> anyhow::Result<Pipeline> {
    let err = |what: &str| anyhow!("line {line}: {what} in {{{{ {src} }}}}");
    let mut cmds = vec![Vec::new()];
    while let Some(t) = toks.get(*pos) {
        *pos += 1;
        let arg = match t {
            Tok::Close => {
                *pos -= 1;
                break;
            }
            Tok::Pipe => {
                cmds.push(Vec::new());
                continue;
            }
            Tok::Open => {
                let sub = parse_cmds(toks, pos, line, src)?;
                if toks.get(*pos) != Some(&Tok::Close) {
                    return Err(err("an unclosed ("));
                }
                *pos += 1;
                Arg::Sub(sub)
            }
            Tok::Field(f) => Arg::Field(f.clone()),
            Tok::Var(v, f) => Arg::Var(v.clone(), f.clone()),
            Tok::Str(s) => Arg::Lit(Value::Str(s.clone())),
            Tok::Int(n) => Arg::Lit(Value::Int(*n)),
            Tok::Ident(w) if w == "true" || w == "false" => Arg::Lit(Value::Bool(w == "true")),
            Tok::Ident(w) if w == "nil" => Arg::Lit(Value::Nil),
            Tok::Ident(w) if FUNCTIONS.contains(&w.as_str()) => Arg::Func(w.clone()),
            Tok::Ident(w) => bail!(
                "line {line}: function {w:?} not defined (Bacalhau's templates have Go's built-in functions only); use --no-template to send the spec as it is"
            ),
            Tok::Declare | Tok::Assign => return Err(err("a misplaced := or =")),
        };
        cmds.last_mut().expect("one command").push(arg);
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err(err("an empty command"));
    }
    Ok(Pipeline {
        bind: None,
        cmds,
        line,
    })
}

/// The `else` or `end` action that ended a list, with its line.
type Stop = Option<(String, usize)>;

/// Parses items from `pos` up to an `else`/`end` (returned, with its line) or the end.
fn parse_list(items: &[Item<'_>], pos: &mut usize) -> anyhow::Result<(Vec<Node>, Stop)> {
    let mut nodes = Vec::new();
    while let Some(item) = items.get(*pos) {
        *pos += 1;
        let (src, line) = match item {
            Item::Text(t) => {
                nodes.push(Node::Text(t.to_string()));
                continue;
            }
            Item::Action(src, line) => (*src, *line),
        };
        if src.starts_with("/*") {
            continue;
        }
        let toks = tokenize(src, line)?;
        match toks.first() {
            Some(Tok::Ident(w)) if w == "end" || w == "else" => {
                return Ok((nodes, Some((src.to_string(), line))));
            }
            Some(Tok::Ident(w)) if w == "if" => {
                let mut branches = Vec::new();
                let mut cond = parse_pipeline(&toks[1..], line, src)?;
                loop {
                    let (body, stop) = parse_list(items, pos)?;
                    branches.push((cond, body));
                    let Some((stop, sline)) = stop else {
                        bail!("line {line}: {{{{ {src} }}}} has no {{{{ end }}}}");
                    };
                    if stop == "end" {
                        nodes.push(Node::If(branches, Vec::new()));
                        break;
                    }
                    let st = tokenize(&stop, sline)?;
                    if matches!(st.get(1), Some(Tok::Ident(w)) if w == "if") {
                        cond = parse_pipeline(&st[2..], sline, &stop)?;
                        continue;
                    }
                    if st.len() != 1 {
                        bail!("line {sline}: {{{{ {stop} }}}} is not else or else if");
                    }
                    let (otherwise, end) = parse_list(items, pos)?;
                    match end {
                        Some((e, _)) if e == "end" => {}
                        _ => bail!("line {sline}: {{{{ else }}}} has no {{{{ end }}}}"),
                    }
                    nodes.push(Node::If(branches, otherwise));
                    break;
                }
            }
            Some(Tok::Ident(w)) if w == "with" => {
                let p = parse_pipeline(&toks[1..], line, src)?;
                let (body, stop) = parse_list(items, pos)?;
                let otherwise = match stop {
                    Some((e, _)) if e == "end" => Vec::new(),
                    Some((e, sline)) if e == "else" => match parse_list(items, pos)? {
                        (o, Some((end, _))) if end == "end" => o,
                        _ => bail!("line {sline}: {{{{ else }}}} has no {{{{ end }}}}"),
                    },
                    _ => bail!("line {line}: {{{{ {src} }}}} has no {{{{ end }}}}"),
                };
                nodes.push(Node::With(p, body, otherwise));
            }
            Some(Tok::Ident(w))
                if matches!(
                    w.as_str(),
                    "range" | "define" | "template" | "block" | "break" | "continue"
                ) =>
            {
                bail!(
                    "line {line}: the template action {w:?} is not supported (Caravel renders values, if, with, variables and Go's built-in functions); use --no-template to send the spec as it is"
                );
            }
            _ => nodes.push(Node::Out(parse_pipeline(&toks, line, src)?)),
        }
    }
    Ok((nodes, None))
}

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Str(String),
    Int(i64),
    Bool(bool),
    Nil,
    Map(&'a BTreeMap<String, String>),
}

impl Value<'_> {
    fn truthy(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Int(n) => *n != 0,
            Value::Bool(b) => *b,
            Value::Nil => false,
            Value::Map(m) => !m.is_empty(),
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "int",
            Value::Bool(_) => "bool",
            Value::Nil => "nil",
            Value::Map(_) => "map[string]string",
        }
    }
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Nil => "<no value>".into(),
            Value::Map(m) => format!(
                "map[{}]",
                m.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

type Vars<'a> = Vec<(String, Value<'a>)>;

fn exec<'a>(
    nodes: &[Node],
    dot: &Value<'a>,
    vars: &mut Vars<'a>,
    out: &mut String,
) -> anyhow::Result<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Out(p) => {
                let v = eval_pipeline(p, dot, vars)?;
                if p.bind.is_none() {
                    out.push_str(&v.text());
                }
            }
            Node::If(branches, otherwise) => {
                let depth = vars.len();
                let mut done = false;
                for (cond, body) in branches {
                    if eval_pipeline(cond, dot, vars)?.truthy() {
                        exec(body, dot, vars, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    exec(otherwise, dot, vars, out)?;
                }
                vars.truncate(depth);
            }
            Node::With(p, body, otherwise) => {
                let depth = vars.len();
                let v = eval_pipeline(p, dot, vars)?;
                if v.truthy() {
                    exec(body, &v, vars, out)?;
                } else {
                    exec(otherwise, dot, vars, out)?;
                }
                vars.truncate(depth);
            }
        }
    }
    Ok(())
}

fn eval_pipeline<'a>(
    p: &Pipeline,
    dot: &Value<'a>,
    vars: &mut Vars<'a>,
) -> anyhow::Result<Value<'a>> {
    let mut piped: Option<Value<'a>> = None;
    for cmd in &p.cmds {
        piped = Some(eval_cmd(cmd, piped, dot, vars, p.line)?);
    }
    let v = piped.unwrap_or(Value::Nil);
    match &p.bind {
        Some((name, true)) => vars.push((name.clone(), v.clone())),
        Some((name, false)) => match vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v.clone(),
            None => bail!("line {}: undefined variable {name}", p.line),
        },
        None => {}
    }
    Ok(v)
}

fn field<'a>(base: Value<'a>, path: &[String], line: usize) -> anyhow::Result<Value<'a>> {
    let mut v = base;
    for key in path {
        v = match v {
            Value::Map(m) => match m.get(key) {
                Some(s) => Value::Str(s.clone()),
                None => bail!(
                    "line {line}: map has no entry for key {key:?}: give it with -V {key}=VALUE, or export it and pass -E '^{key}$'"
                ),
            },
            other => bail!(
                "line {line}: can't evaluate field {key} in type {}",
                other.type_name()
            ),
        };
    }
    Ok(v)
}

fn eval_arg<'a>(
    a: &Arg,
    dot: &Value<'a>,
    vars: &mut Vars<'a>,
    line: usize,
) -> anyhow::Result<Value<'a>> {
    match a {
        Arg::Field(path) => field(dot.clone(), path, line),
        Arg::Var(name, path) => {
            let v = vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| anyhow!("line {line}: undefined variable {name}"))?;
            field(v, path, line)
        }
        Arg::Lit(v) => Ok(v.clone()),
        Arg::Sub(p) => eval_pipeline(p, dot, vars),
        Arg::Func(f) => call(f, Vec::new(), line),
    }
}

fn eval_cmd<'a>(
    cmd: &[Arg],
    piped: Option<Value<'a>>,
    dot: &Value<'a>,
    vars: &mut Vars<'a>,
    line: usize,
) -> anyhow::Result<Value<'a>> {
    match cmd {
        [Arg::Func(f), args @ ..] => {
            // `and` and `or` stop at the first value that decides, as Go's.
            if f == "and" || f == "or" {
                let mut last = Value::Nil;
                let n = args.len() + usize::from(piped.is_some());
                if n == 0 {
                    bail!("line {line}: wrong number of args for {f}: want at least 1 got 0");
                }
                for a in args {
                    last = eval_arg(a, dot, vars, line)?;
                    if last.truthy() == (f == "or") {
                        return Ok(last);
                    }
                }
                return Ok(piped.unwrap_or(last));
            }
            let mut vals = Vec::with_capacity(args.len() + 1);
            for a in args {
                vals.push(eval_arg(a, dot, vars, line)?);
            }
            vals.extend(piped);
            call(f, vals, line)
        }
        [one] => match piped {
            None => eval_arg(one, dot, vars, line),
            Some(_) => bail!("line {line}: can't give argument to non-function"),
        },
        _ => bail!("line {line}: can't give argument to non-function"),
    }
}

fn compare(a: &Value<'_>, b: &Value<'_>, line: usize) -> anyhow::Result<std::cmp::Ordering> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        _ => bail!(
            "line {line}: incompatible types for comparison: {} and {}",
            a.type_name(),
            b.type_name()
        ),
    }
}

fn call<'a>(f: &str, args: Vec<Value<'a>>, line: usize) -> anyhow::Result<Value<'a>> {
    let want = |n: usize| -> anyhow::Result<()> {
        if args.len() == n {
            Ok(())
        } else {
            bail!(
                "line {line}: wrong number of args for {f}: want {n} got {}",
                args.len()
            )
        }
    };
    Ok(match f {
        "not" => {
            want(1)?;
            Value::Bool(!args[0].truthy())
        }
        "eq" => {
            if args.len() < 2 {
                bail!("line {line}: missing argument for comparison");
            }
            let mut any = false;
            for b in &args[1..] {
                any |= compare(&args[0], b, line)?.is_eq();
            }
            Value::Bool(any)
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            want(2)?;
            let o = compare(&args[0], &args[1], line)?;
            Value::Bool(match f {
                "ne" => o.is_ne(),
                "lt" => o.is_lt(),
                "le" => o.is_le(),
                "gt" => o.is_gt(),
                _ => o.is_ge(),
            })
        }
        "len" => {
            want(1)?;
            Value::Int(match &args[0] {
                Value::Str(s) => s.len() as i64,
                Value::Map(m) => m.len() as i64,
                other => bail!("line {line}: len of type {}", other.type_name()),
            })
        }
        "index" => {
            let Some((base, keys)) = args.split_first() else {
                bail!("line {line}: wrong number of args for index: want at least 1 got 0");
            };
            let mut v = base.clone();
            for k in keys {
                v = match (&v, k) {
                    // As Go's index: a missing key is the zero value, not an error.
                    (Value::Map(m), Value::Str(k)) => {
                        Value::Str(m.get(k).cloned().unwrap_or_default())
                    }
                    (Value::Str(s), Value::Int(i)) => {
                        match usize::try_from(*i).ok().and_then(|i| s.as_bytes().get(i)) {
                            Some(b) => Value::Int(i64::from(*b)),
                            None => bail!("line {line}: index out of range: {i}"),
                        }
                    }
                    (b, k) => bail!(
                        "line {line}: can't index item of type {} with {}",
                        b.type_name(),
                        k.type_name()
                    ),
                };
            }
            v
        }
        "print" | "println" => {
            let mut s = String::new();
            for (i, a) in args.iter().enumerate() {
                let both_not_str =
                    i > 0 && !matches!(a, Value::Str(_)) && !matches!(args[i - 1], Value::Str(_));
                if f == "println" && i > 0 || both_not_str {
                    s.push(' ');
                }
                s.push_str(&a.text());
            }
            if f == "println" {
                s.push('\n');
            }
            Value::Str(s)
        }
        "printf" => {
            let Some((Value::Str(fmt), rest)) = args.split_first() else {
                bail!("line {line}: printf needs a format string first");
            };
            Value::Str(printf(fmt, rest))
        }
        "html" | "js" | "urlquery" => {
            let s: String = args.iter().map(Value::text).collect();
            Value::Str(match f {
                "html" => s
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&#34;")
                    .replace('\'', "&#39;"),
                "js" => s
                    .replace('\\', "\\\\")
                    .replace('\'', "\\'")
                    .replace('"', "\\\"")
                    .replace('<', "\\u003C")
                    .replace('>', "\\u003E"),
                _ => s
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        b' ' => "+".into(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect(),
            })
        }
        other => bail!("line {line}: function {other:?} not defined"),
    })
}

/// Go's `fmt.Sprintf` for the verbs a spec uses: `%s %v %d %q %t %x %%`.
fn printf(fmt: &str, args: &[Value<'_>]) -> String {
    let mut out = String::new();
    let mut next = args.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(a) = next.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        match (verb, a) {
            ('s' | 'v', a) => out.push_str(&a.text()),
            ('d', Value::Int(n)) => out.push_str(&n.to_string()),
            ('t', Value::Bool(b)) => out.push_str(&b.to_string()),
            ('q', Value::Str(s)) => out.push_str(&format!("{s:?}")),
            ('x', Value::Str(s)) => out.extend(s.bytes().map(|b| format!("{b:02x}"))),
            ('x', Value::Int(n)) => out.push_str(&format!("{n:x}")),
            (v, a) => out.push_str(&format!("%!{v}({}={})", a.type_name(), a.text())),
        }
    }
    let extra: Vec<String> = next
        .map(|a| format!("{}={}", a.type_name(), a.text()))
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_substituted_and_trim_markers_eat_the_space_beside_them() {
        let d = data(&[("name", "wc"), ("count", "3")]);
        assert_eq!(
            render("Name: {{.name}}\nCount: {{ .count }}\n", &d).unwrap(),
            "Name: wc\nCount: 3\n"
        );
        assert_eq!(render("a  {{- .name -}}  b", &d).unwrap(), "awcb");
        assert_eq!(render(r#"x: {{ "{{" }}"#, &d).unwrap(), "x: {{");
        assert_eq!(render("no actions", &d).unwrap(), "no actions");
        // `-3` is a number, not a trim marker.
        assert_eq!(render("n: {{-3}}", &d).unwrap(), "n: -3");
        assert_eq!(render("a {{/* } }} */}} b", &d).unwrap(), "a  b");
    }

    #[test]
    fn conditions_with_variables_and_functions_render_as_go_does() {
        let d = data(&[("env", "prod"), ("gpu", ""), ("my-key", "v")]);
        let t =
            "{{ if eq .env \"prod\" \"staging\" }}big{{ else if .gpu }}gpu{{ else }}small{{ end }}";
        assert_eq!(render(t, &d).unwrap(), "big");
        let t = "{{ if .gpu }}gpu{{ else }}{{ with .env }}[{{ . }}]{{ end }}{{ end }}";
        assert_eq!(render(t, &d).unwrap(), "[prod]");
        assert_eq!(
            render(
                "{{ $n := index . \"my-key\" }}{{ $n }}{{ $n = \"w\" }}{{ $n }}",
                &d
            )
            .unwrap(),
            "vw"
        );
        assert_eq!(
            render("{{ .env | printf \"%q-%s\" \"x\" }}", &d).unwrap(),
            "\"x\"-prod"
        );
        assert_eq!(
            render(
                "{{ len .env }} {{ not .gpu }} {{ and .env .gpu 1 }}|{{ or .gpu \"d\" }}",
                &d
            )
            .unwrap(),
            "4 true |d"
        );
        assert_eq!(render("{{ index . \"nope\" }}.", &d).unwrap(), ".");
        assert_eq!(render("{{ (printf \"%d\" 3) | len }}", &d).unwrap(), "1");
    }

    #[test]
    fn a_missing_key_or_an_unknown_action_is_an_error_naming_it() {
        let d = data(&[]);
        let e = render("Name: x\nImage: {{ .image }}\n", &d)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("\"image\"") && e.contains("-V image="),
            "{e}"
        );
        let e = render("{{ if .x }}y{{ end }}", &d).unwrap_err().to_string();
        assert!(e.contains("no entry for key \"x\""), "{e}");
        let e = render("{{ range . }}y{{ end }}", &d)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"range\" is not supported") && e.contains("--no-template"),
            "{e}"
        );
        let e = render("{{ default \"a\" .x }}", &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("function \"default\" not defined"), "{e}");
        let e = render("oops {{ .x", &d).unwrap_err().to_string();
        assert!(e.contains("never closed"), "{e}");
        let e = render("{{ if 1 }}a", &d).unwrap_err().to_string();
        assert!(e.contains("has no {{ end }}"), "{e}");
        let e = render("a{{ end }}", &d).unwrap_err().to_string();
        assert!(e.contains("unexpected {{ end }}"), "{e}");
        let e = render("{{ eq 1 \"1\" }}", &d).unwrap_err().to_string();
        assert!(e.contains("incompatible types"), "{e}");
    }

    #[test]
    fn data_comes_from_vars_and_matching_environment_variables() {
        let env = vec![
            ("JOB_IMAGE".to_string(), "busybox".to_string()),
            ("MY_JOB_X".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let d = template_data(
            &["count=2,name=a".into(), "JOB_IMAGE=alpine".into()],
            Some("JOB_"),
            env.clone().into_iter(),
        )
        .unwrap();
        // Unanchored, as Go's MatchString: MY_JOB_X matches JOB_ too.
        assert_eq!(
            d,
            data(&[
                ("JOB_IMAGE", "alpine"),
                ("MY_JOB_X", "x"),
                ("count", "2"),
                ("name", "a")
            ])
        );
        let all = template_data(&[], Some("*"), env.into_iter()).unwrap();
        assert_eq!(all.len(), 3);
        assert!(template_data(&["novalue".into()], None, std::iter::empty()).is_err());
        assert!(template_data(&[], Some("("), std::iter::empty()).is_err());
    }
}
