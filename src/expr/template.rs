//! `${…}` templates over JSON values.

use serde_json::Value;

use super::{EvalError, Expression, ParseError, Scope};

/// One template string, parsed.
#[derive(Debug, Clone)]
pub enum Template {
    /// No expression (after `$${` unescaping).
    Literal(String),
    /// Exactly one `${…}`: renders to the expression's JSON value, type kept.
    Whole(Expression),
    /// Text and expressions mixed: renders to a string.
    Parts(Vec<Part>),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Expr(Expression),
}

impl Template {
    /// Parses a template string; every `${` must close.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if text[i..].starts_with("$${") {
                literal.push_str("${");
                i += 3;
            } else if text[i..].starts_with("${") {
                let end = find_close(text, i + 2).ok_or_else(|| ParseError {
                    message: format!("unterminated `${{` at offset {i} in `{text}`"),
                })?;
                let source = &text[i + 2..end];
                let expression = Expression::parse(source)?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Expr(expression));
                i = end + 1;
            } else {
                let ch = text[i..].chars().next().unwrap_or_default();
                literal.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(match parts.len() {
            0 => Template::Literal(String::new()),
            1 => match parts.pop() {
                Some(Part::Expr(e)) => Template::Whole(e),
                Some(Part::Text(t)) => Template::Literal(t),
                None => Template::Literal(String::new()),
            },
            _ => Template::Parts(parts),
        })
    }

    pub fn has_expressions(&self) -> bool {
        !matches!(self, Template::Literal(_))
    }

    /// The expressions inside, in order.
    pub fn expressions(&self) -> Vec<&Expression> {
        match self {
            Template::Literal(_) => vec![],
            Template::Whole(e) => vec![e],
            Template::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Expr(e) => Some(e),
                    Part::Text(_) => None,
                })
                .collect(),
        }
    }

    pub fn render(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        match self {
            Template::Literal(text) => Ok(Value::String(text.clone())),
            Template::Whole(expression) => expression.evaluate(scope),
            Template::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(text) => out.push_str(text),
                        Part::Expr(expression) => match expression.evaluate(scope)? {
                            Value::String(s) => out.push_str(&s),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    /// Renders and insists on text (for places that need a string).
    pub fn render_string(&self, scope: &dyn Scope) -> Result<String, EvalError> {
        Ok(match self.render(scope)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }
}

/// Finds the `}` closing a `${` whose body starts at `start`, skipping braces
/// and quotes inside the CEL expression (`${ {'a': 1}['a'] }`, `${ "}" }`).
fn find_close(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'{' => depth += 1,
                b'}' if depth == 0 => return Some(i),
                b'}' => depth -= 1,
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// A JSON value whose strings are templates: task config, `params`, `export`.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    Plain(Value),
    String(Template),
    Array(Vec<TemplateValue>),
    Object(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Compiles every string inside `value`. Errors carry the JSON path
    /// relative to `value` (e.g. `.env.TOKEN`).
    pub fn compile(value: &Value) -> Result<Self, Vec<(String, ParseError)>> {
        let mut errors = Vec::new();
        let compiled = Self::compile_at(value, String::new(), &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    fn compile_at(value: &Value, path: String, errors: &mut Vec<(String, ParseError)>) -> Self {
        match value {
            Value::String(text) => match Template::parse(text) {
                Ok(Template::Literal(s)) if s == *text => TemplateValue::Plain(value.clone()),
                Ok(template) => TemplateValue::String(template),
                Err(e) => {
                    errors.push((path, e));
                    TemplateValue::Plain(Value::Null)
                }
            },
            Value::Array(items) => TemplateValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, format!("{path}[{i}]"), errors))
                    .collect(),
            ),
            Value::Object(map) => TemplateValue::Object(
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Self::compile_at(v, format!("{path}.{k}"), errors),
                        )
                    })
                    .collect(),
            ),
            other => TemplateValue::Plain(other.clone()),
        }
    }

    pub fn has_expressions(&self) -> bool {
        match self {
            TemplateValue::Plain(_) => false,
            TemplateValue::String(t) => t.has_expressions(),
            TemplateValue::Array(items) => items.iter().any(Self::has_expressions),
            TemplateValue::Object(entries) => entries.iter().any(|(_, v)| v.has_expressions()),
        }
    }

    /// True when any expression inside references the scope name `name`.
    pub fn uses(&self, name: &str) -> bool {
        match self {
            TemplateValue::Plain(_) => false,
            TemplateValue::String(t) => t.expressions().iter().any(|e| e.uses(name)),
            TemplateValue::Array(items) => items.iter().any(|v| v.uses(name)),
            TemplateValue::Object(entries) => entries.iter().any(|(_, v)| v.uses(name)),
        }
    }

    /// Renders to JSON. The error names the path of the failing string.
    pub fn render(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        self.render_at(scope, "")
    }

    fn render_at(&self, scope: &dyn Scope, path: &str) -> Result<Value, EvalError> {
        Ok(match self {
            TemplateValue::Plain(v) => v.clone(),
            TemplateValue::String(t) => t.render(scope).map_err(|e| EvalError {
                message: if path.is_empty() {
                    e.message
                } else {
                    format!("{path}: {}", e.message)
                },
            })?,
            TemplateValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.render_at(scope, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            TemplateValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render_at(scope, &format!("{path}.{k}"))?)))
                    .collect::<Result<_, EvalError>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::MapScope;
    use serde_json::json;

    fn scope() -> MapScope {
        let mut scope = MapScope::default();
        scope
            .names
            .insert("vars".into(), json!({"n": 5, "name": "eu", "list": [1, 2]}));
        scope
    }

    #[test]
    fn whole_template_keeps_type() {
        let t = Template::parse("${vars.n}").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!(5));
        let t = Template::parse("${vars.list}").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!([1, 2]));
    }

    #[test]
    fn mixed_template_is_text() {
        let t = Template::parse("n=${vars.n} r=${vars.name}!").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!("n=5 r=eu!"));
    }

    #[test]
    fn escape_is_literal() {
        let t = Template::parse("$${HOME} and ${vars.name}").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!("${HOME} and eu"));
        let t = Template::parse("$${HOME}").unwrap();
        assert!(!t.has_expressions());
        assert_eq!(t.render(&scope()).unwrap(), json!("${HOME}"));
    }

    #[test]
    fn braces_and_quotes_inside_expressions() {
        let t = Template::parse("${ {'a': 1}['a'] + vars.n }").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!(6));
        let t = Template::parse("x${ '}' }y").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), json!("x}y"));
    }

    #[test]
    fn parse_errors() {
        assert!(Template::parse("${vars.n").is_err());
        assert!(Template::parse("${}").is_err());
        assert!(Template::parse("${vars.(}").is_err());
    }

    #[test]
    fn eval_error_names_expression() {
        let t = Template::parse("${vars.missing + 1}").unwrap();
        let e = t.render(&scope()).unwrap_err();
        assert!(e.message.contains("vars.missing"), "{e}");
    }

    #[test]
    fn template_value_paths() {
        let v = TemplateValue::compile(&json!({"a": ["x", "${vars."]})).unwrap_err();
        assert_eq!(v[0].0, ".a[1]");
        let v = TemplateValue::compile(&json!({"a": ["${vars.n}", 3], "b": "k"})).unwrap();
        assert!(v.has_expressions());
        assert!(v.uses("vars"));
        assert!(!v.uses("tasks"));
        assert_eq!(v.render(&scope()).unwrap(), json!({"a": [5, 3], "b": "k"}));
    }
}
