//! The routes and parameters `docs/openapi.yaml` documents, for the tests
//! that hold the router to it and send hostile values through it.

use yaml_rust2::{Yaml, YamlLoader};

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path template, e.g. `/v1/progress/{user_id}`.
    pub path: String,
    /// Its parameters, `$ref`s resolved.
    pub parameters: Vec<Parameter>,
    /// Whether it takes a request body.
    pub body: bool,
}

/// One documented parameter.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// Its name.
    pub name: String,
    /// `path` or `query`.
    pub location: String,
    /// Required.
    pub required: bool,
    /// The schema's example (of its items for arrays), or a plain value.
    pub example: String,
}

impl Operation {
    /// The path with every path parameter set to its example, except
    /// `over` set to `value` (already escaped for a URL).
    pub fn path_with(&self, over: Option<(&str, &str)>) -> String {
        let mut p = self.path.clone();
        for par in self.parameters.iter().filter(|p| p.location == "path") {
            let v = match over {
                Some((n, v)) if n == par.name => v.to_string(),
                _ => par.example.clone(),
            };
            p = p.replace(&format!("{{{}}}", par.name), &v);
        }
        p
    }

    /// The query string with every required query parameter at its example,
    /// and `over` set to `value` (already escaped) whether required or not.
    pub fn query_with(&self, over: Option<(&str, &str)>) -> String {
        let mut pairs = Vec::new();
        for par in self.parameters.iter().filter(|p| p.location == "query") {
            match over {
                Some((n, v)) if n == par.name => pairs.push(format!("{n}={v}")),
                _ if par.required => {
                    pairs.push(format!("{}={}", par.name, form_escape(&par.example)))
                }
                _ => {}
            }
        }
        pairs.join("&")
    }
}

/// Percent-escapes `s` for a URL query or path segment.
pub fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn resolve<'a>(root: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(r) => {
            let mut at = root;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_badvalue(), "dangling $ref {r}");
            at
        }
        None => node,
    }
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Every operation of `docs/openapi.yaml`.
pub fn operations() -> Vec<Operation> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let root = &docs[0];
    assert!(
        root["openapi"].as_str().unwrap().starts_with("3.0"),
        "OpenAPI 3.0"
    );
    let mut out = Vec::new();
    for (p, item) in root["paths"].as_hash().expect("paths") {
        let p = p.as_str().unwrap();
        for (m, op) in item.as_hash().unwrap() {
            let m = m.as_str().unwrap();
            let parameters = op["parameters"]
                .as_vec()
                .map(|v| v.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|raw| {
                    let par = resolve(root, raw);
                    let schema = &par["schema"];
                    let example = scalar(&schema["example"])
                        .or_else(|| scalar(&schema["items"]["example"]))
                        .or_else(|| schema["enum"].as_vec().and_then(|e| scalar(&e[0])))
                        .unwrap_or_else(|| "1".into());
                    Parameter {
                        name: par["name"].as_str().unwrap().to_string(),
                        location: par["in"].as_str().unwrap().to_string(),
                        required: par["required"].as_bool().unwrap_or(false),
                        example,
                    }
                })
                .collect();
            out.push(Operation {
                method: m.to_ascii_uppercase(),
                path: p.to_string(),
                parameters,
                body: !op["requestBody"].is_badvalue(),
            });
        }
    }
    out
}
