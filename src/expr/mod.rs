//! Expressions: CEL conditions (`when`, `filter`) and `${…}` templates (SPEC §6).
//!
//! Everything is parsed once, at load time, into [`Condition`], [`Template`]
//! and [`TemplateValue`]; evaluating them at run time never re-parses. A
//! template string that is exactly one `${…}` keeps the value's JSON type;
//! otherwise the parts are concatenated as text. `$${` is a literal `${`.

mod template;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value;

pub use template::{Template, TemplateValue};

/// The names an expression may use (SPEC §6), and those a `check`'s
/// `until` sees besides `output`: an http poll's `status`, `headers` and
/// `body`, a sql poll's `rows`, `scalar` and `row_count`.
pub const SCOPE_NAMES: &[&str] = &[
    "vars",
    "params",
    "event",
    "tasks",
    "run",
    "secrets",
    "output",
    "now",
    "status",
    "headers",
    "body",
    "rows",
    "scalar",
    "row_count",
];

/// A parse error of an expression, with the offending source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
}

/// An evaluation error at run time; it fails the task that evaluated it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

impl EvalError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What an expression can see. Values are produced on demand so that only
/// the names an expression actually references are converted.
pub trait Scope {
    /// The value bound to a top-level name (`vars`, `tasks`, …), if any.
    fn lookup(&self, name: &str) -> Option<Value>;
    /// `now`, in milliseconds since the epoch. Passed in, never read from a clock
    /// here, so evaluation is deterministic.
    fn now(&self) -> i64;
}

/// A scope made of plain JSON values, for tests and simple callers.
#[derive(Debug, Default, Clone)]
pub struct MapScope {
    pub names: HashMap<String, Value>,
    pub now: i64,
}

impl Scope for MapScope {
    fn lookup(&self, name: &str) -> Option<Value> {
        self.names.get(name).cloned()
    }
    fn now(&self) -> i64 {
        self.now
    }
}

/// CEL's standard library plus the strings, lists and math extensions
/// (`trim()`, `split()`, `lowerAscii()`, `math.greatest()`, …).
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
    let mut env = cel::Env::stdlib();
    for extension in [
        cel::extensions::strings as fn(&mut cel::Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
    ] {
        if let Err(e) = env.add_extension(extension) {
            tracing::error!(error = %e, "A CEL extension failed to load.");
        }
    }
    Arc::new(env)
});

/// Deepest nesting of brackets an expression may have. The CEL parser
/// recurses per level (deeply so in unoptimised builds), so input nesting
/// without bound could exhaust a thread's stack; no real condition comes
/// near this.
pub const MAX_NESTING: usize = 32;

/// Refuses expressions nesting `(`, `[` or `{` deeper than [`MAX_NESTING`]
/// (outside string literals), before the parser sees them.
fn check_nesting(source: &str) -> Result<(), ParseError> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    if deepest > MAX_NESTING {
        return Err(ParseError {
            message: format!(
                "expression nests {deepest} levels deep; at most {MAX_NESTING} are allowed"
            ),
        });
    }
    Ok(())
}

/// One compiled CEL expression.
#[derive(Debug, Clone)]
pub struct Expression {
    source: Arc<str>,
    program: Arc<cel::Program>,
    /// The scope names the expression references, so evaluation binds only those.
    uses: Vec<&'static str>,
}

impl Expression {
    pub fn parse(source: &str) -> Result<Self, ParseError> {
        if source.trim().is_empty() {
            return Err(ParseError {
                message: "empty expression".into(),
            });
        }
        check_nesting(source)?;
        let program = ENV.compile(source).map_err(|e| ParseError {
            message: format!("invalid CEL `{source}`: {}", one_line(&e.to_string())),
        })?;
        let references = program.references();
        let uses = SCOPE_NAMES
            .iter()
            .copied()
            .filter(|name| references.has_variable(name))
            .collect();
        Ok(Self {
            source: source.into(),
            program: Arc::new(program),
            uses,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the expression mentions `name` at top level.
    pub fn uses(&self, name: &str) -> bool {
        self.uses.contains(&name)
    }

    /// Evaluates to JSON.
    pub fn evaluate(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        let value = self.evaluate_cel(scope)?;
        cel_to_json(&value)
            .map_err(|message| EvalError::new(format!("`{}` evaluated to {message}", self.source)))
    }

    fn evaluate_cel(&self, scope: &dyn Scope) -> Result<cel::Value, EvalError> {
        let mut context = cel::Context::with_env(Arc::clone(&ENV));
        for name in &self.uses {
            let value = if *name == "now" {
                millis_to_cel(scope.now())
            } else {
                match scope.lookup(name) {
                    Some(value) => json_to_cel(&value),
                    None => continue,
                }
            };
            context.add_variable_from_value(*name, value);
        }
        self.program
            .execute(&context)
            .map_err(|e| EvalError::new(format!("`{}`: {e}", self.source)))
    }
}

/// A CEL condition that must evaluate to a bool.
#[derive(Debug, Clone)]
pub struct Condition(Expression);

impl Condition {
    pub fn parse(source: &str) -> Result<Self, ParseError> {
        Expression::parse(source).map(Self)
    }

    pub fn source(&self) -> &str {
        self.0.source()
    }

    pub fn evaluate(&self, scope: &dyn Scope) -> Result<bool, EvalError> {
        match self.0.evaluate_cel(scope)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(EvalError::new(format!(
                "condition `{}` must be a bool, got {:?}",
                self.0.source,
                other.type_of()
            ))),
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn millis_to_cel(millis: i64) -> cel::Value {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => cel::Value::Timestamp(time.fixed_offset()),
        None => cel::Value::Null,
    }
}

/// JSON → CEL. Integers become `int` where they fit (CEL's usual numeric
/// type), so `vars.n + 1` works on numbers read from JSON.
pub fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<String, cel::Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect();
            cel::Value::from(map)
        }
    }
}

/// CEL → JSON; timestamps become RFC 3339 strings, durations humantime text.
pub fn cel_to_json(value: &cel::Value) -> Result<Value, String> {
    Ok(match value {
        cel::Value::Duration(d) => match d.to_std() {
            Ok(d) => Value::String(humantime::format_duration(d).to_string()),
            Err(_) => return Err("a negative duration".into()),
        },
        cel::Value::Float(f) if !f.is_finite() => return Err(format!("a non-finite number {f}")),
        other => other
            .json()
            .map_err(|_| format!("a value with no JSON form ({:?})", other.type_of()))?,
    })
}
