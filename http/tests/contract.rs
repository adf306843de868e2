//! The OpenAPI contract, checked property-style against a real server: for every operation of
//! `/openapi.json`, requests generated from its own schemas (valid ones, and invalid ones made
//! by one known mutation each), with no token, an unknown one, and each scope's. Every answer
//! must be a status the document lists for that operation, errors must have the documented
//! shape, bad input must never get a 5xx, a schema-valid request must never be refused as not
//! matching the schema, and the token must decide exactly the 401s and 403s.
//!
//! `SIREN_CONTRACT_CASES` sets the requests per operation (default 60).

mod common;

use std::collections::BTreeMap;

use common::{some_user_and_items, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Client;
use serde_json::{json, Map, Value};
use siren_http::config::{Scope, Token};

const TOKENS: [(&str, Scope); 3] = [
    ("reader-0123456789", Scope::Read),
    ("writer-0123456789", Scope::Write),
    ("admin--0123456789", Scope::Admin),
];

/// Strictly valid values of the document's schemas.
struct Gen<'a> {
    doc: &'a Value,
    rng: StdRng,
    /// Real ids, so that many requests reach real users and items.
    ids: Vec<u64>,
}

impl Gen<'_> {
    fn resolve(&self, s: &Value) -> Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                self.doc["components"]["schemas"][name].clone()
            }
            None => s.clone(),
        }
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())].clone()
    }

    fn integer(&mut self, s: &Value, name: &str) -> Value {
        let (lo, hi) = match s["format"].as_str() {
            Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
            _ => (i64::MIN, i64::MAX),
        };
        let lo = s["minimum"].as_i64().map_or(lo, |m| m.max(lo));
        let hi = s["maximum"].as_i64().map_or(hi, |m| m.min(hi));
        // Ids mostly of real users and items, so that requests reach real data.
        let id_field = matches!(name, "user" | "item" | "candidates");
        let v = match self.rng.random_range(0..6) {
            _ if matches!(name, "k" | "limit") && self.rng.random_bool(0.7) => {
                self.rng.random_range(1..=20)
            }
            _ if id_field && self.rng.random_bool(0.7) => {
                let ids = self.ids.clone();
                self.pick(&ids) as i64
            }
            0 if !self.ids.is_empty() => {
                let ids = self.ids.clone();
                self.pick(&ids) as i64
            }
            1 => lo,
            2 => hi,
            3 => self.rng.random_range(lo..=hi),
            _ => self.rng.random_range(0..100i64),
        }
        .clamp(lo, hi);
        // Any whole spelling is an integer to JSON Schema: now and then `179.0`.
        if v.unsigned_abs() < 1 << 53 && self.rng.random_bool(0.2) {
            json!(v as f64)
        } else {
            json!(v)
        }
    }

    fn string(&mut self, name: &str) -> Value {
        if name == "model" && self.rng.random_bool(0.5) {
            return json!("model");
        }
        let n = self.rng.random_range(1..10);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        json!((0..n)
            .map(|_| char::from(alphabet[self.rng.random_range(0..alphabet.len())]))
            .collect::<String>())
    }

    /// A value valid for `schema`; `name` is the property it is for.
    fn valid(&mut self, schema: &Value, name: &str) -> Value {
        let s = self.resolve(schema);
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return self.pick(e);
        }
        if let Some(alts) = s.get("oneOf").or(s.get("anyOf")).and_then(Value::as_array) {
            let alt = self.pick(alts);
            return self.valid(&alt, name);
        }
        let ty = match &s["type"] {
            Value::String(t) => t.clone(),
            Value::Array(ts) => {
                let ts: Vec<String> = ts
                    .iter()
                    .filter_map(|t| t.as_str().map(Into::into))
                    .collect();
                self.pick(&ts)
            }
            _ => "object".into(),
        };
        match ty.as_str() {
            "null" => Value::Null,
            "boolean" => json!(self.rng.random::<bool>()),
            "integer" => self.integer(&s, name),
            "number" => match self.rng.random_range(0..8) {
                0 => json!(3.0e38),
                1 => json!(-3.0e38),
                _ => json!(self.rng.random_range(-10.0..10.0f64)),
            },
            "string" => self.string(name),
            "array" => {
                let min = s["minItems"].as_u64().unwrap_or(0) as usize;
                let max = s["maxItems"].as_u64().map_or(6, |m| m.min(6)) as usize;
                // The lengths the test database takes (its schema cannot say them): 3 SemID
                // levels, 16 dimensions.
                let n = match name {
                    "semid" if self.rng.random_bool(0.7) => 3,
                    "embedding" if self.rng.random_bool(0.7) => 16,
                    _ => self.rng.random_range(min..=max.max(min)),
                };
                (0..n).map(|_| self.valid(&s["items"], name)).collect()
            }
            _ => {
                let required = required(&s);
                let mut m = Map::new();
                for (k, v) in s["properties"].as_object().into_iter().flatten() {
                    if required.contains(k) || self.rng.random_bool(0.3) {
                        m.insert(k.clone(), self.valid(v, k));
                    }
                }
                // A retrieval takes exactly one target (a rule the schema does not state):
                // mostly give it just an item.
                if s["properties"].get("embedding").is_some()
                    && s["properties"].get("k").is_some()
                    && self.rng.random_bool(0.6)
                {
                    m.remove("semid");
                    m.remove("embedding");
                    let item = self.valid(&s["properties"]["item"], "item");
                    m.insert("item".into(), item);
                }
                Value::Object(m)
            }
        }
    }
}

fn required(s: &Value) -> Vec<String> {
    s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(String::from))
        .collect()
}

/// One operation of the document.
struct Op {
    method: String,
    path: String,
    body: Option<Value>,
    /// (name, in, schema)
    params: Vec<(String, String, Value)>,
    /// The scope its security requirement names, if any.
    scope: Option<String>,
    statuses: Vec<u16>,
    ok_schema: Value,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let body = op["requestBody"]["content"]["application/json"]["schema"].clone();
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let name = p["name"].as_str().unwrap().to_string();
                    (
                        name,
                        p["in"].as_str().unwrap().to_string(),
                        p["schema"].clone(),
                    )
                })
                .collect();
            let scope = op["security"][0]["bearer"][0].as_str().map(String::from);
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            ops.push(Op {
                method: method.to_uppercase(),
                path: path.clone(),
                body: (!body.is_null()).then_some(body),
                params,
                scope,
                statuses,
                ok_schema: op["responses"]["200"]["content"]["application/json"]["schema"].clone(),
            });
        }
    }
    ops
}

/// How a request was made invalid, and the answer that must come (after authorisation).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mutation {
    None,
    NotJson,
    WrongTopType,
    UnknownField,
    MissingRequired,
    WrongFieldType,
    WrongContentType,
    BadPathOrQuery,
}

impl Mutation {
    fn expected(self) -> Option<(u16, &'static str)> {
        match self {
            Mutation::None => None,
            Mutation::NotJson => Some((400, "invalid_json")),
            Mutation::WrongContentType => Some((415, "unsupported_media_type")),
            _ => Some((400, "invalid_request")),
        }
    }
}

struct Case {
    url: String,
    body: Option<Vec<u8>>,
    content_type: &'static str,
    mutation: Mutation,
}

fn make_case(gen: &mut Gen, op: &Op) -> Case {
    let mut mutation = Mutation::None;
    let mut url = op.path.clone();
    let mut query = Vec::new();
    let bad_param = !op.params.is_empty() && gen.rng.random_bool(0.15);
    let bad_index = gen.rng.random_range(0..op.params.len().max(1));
    for (i, (name, place, schema)) in op.params.iter().enumerate() {
        let text = if bad_param && i == bad_index {
            mutation = Mutation::BadPathOrQuery;
            gen.pick(&["abc", "+5", "1.0", "1e3", "18446744073709551616", "007"])
                .to_string()
        } else {
            // Path and query integers are written in plain digits.
            let v = gen.valid(schema, name);
            match v.as_f64() {
                Some(f) if v.is_f64() => format!("{}", f as i64),
                _ => v.to_string(),
            }
        };
        if place == "path" {
            url = url.replace(&format!("{{{name}}}"), &text);
        } else if (bad_param && i == bad_index) || gen.rng.random_bool(0.5) {
            query.push(format!("{name}={text}"));
        }
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let Some(schema) = &op.body else {
        return Case {
            url,
            body: None,
            content_type: "application/json",
            mutation,
        };
    };
    let mut body = gen.valid(schema, "");
    let mut content_type = "application/json";
    if mutation == Mutation::None && gen.rng.random_bool(0.4) {
        let s = gen.resolve(schema);
        let req = required(&s);
        let ints: Vec<String> = req
            .iter()
            .filter(|k| {
                let p = gen.resolve(&s["properties"][k.as_str()]);
                p["type"] == "integer"
            })
            .cloned()
            .collect();
        let options = [
            Mutation::NotJson,
            Mutation::WrongTopType,
            Mutation::UnknownField,
            Mutation::MissingRequired,
            Mutation::WrongFieldType,
            Mutation::WrongContentType,
        ];
        mutation = gen.pick(&options);
        match mutation {
            Mutation::WrongTopType => body = gen.pick(&[json!([1]), json!("x"), json!(7)]),
            Mutation::MissingRequired if !req.is_empty() => {
                let k = gen.pick(&req);
                body.as_object_mut().unwrap().remove(&k);
            }
            Mutation::WrongFieldType if !ints.is_empty() => {
                let k = gen.pick(&ints);
                let bad = gen.pick(&[json!("1"), json!(1.5), json!(-1), json!([]), json!(null)]);
                body.as_object_mut().unwrap().insert(k, bad);
            }
            Mutation::WrongContentType => content_type = "text/plain",
            Mutation::NotJson => {}
            // An unknown field; also instead of a mutation the body has nothing for.
            _ => {
                mutation = Mutation::UnknownField;
                // First in key order, so that it is met before anything else is refused.
                body.as_object_mut()
                    .unwrap()
                    .insert("_unexpected".into(), json!(1));
            }
        }
    }
    let bytes = match mutation {
        Mutation::NotJson => b"{,}".to_vec(),
        _ => serde_json::to_vec(&body).unwrap(),
    };
    Case {
        url,
        body: Some(bytes),
        content_type,
        mutation,
    }
}

/// The statuses a token may get for an operation needing `scope`: `Some` if the token decides.
fn auth_answer(token: Option<&str>, scope: Option<&str>) -> Option<u16> {
    let scope = scope?;
    let Some(token) = token else { return Some(401) };
    let Some((_, has)) = TOKENS.iter().find(|(t, _)| *t == token) else {
        return Some(401);
    };
    let allowed = *has == Scope::Admin
        || matches!(
            (has, scope),
            (Scope::Read, "read") | (Scope::Write, "write")
        );
    (!allowed).then_some(403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_the_documented_status_and_shape() {
    let cases_per_op: usize = std::env::var("SIREN_CONTRACT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let models = common::built().model.parent().unwrap().to_path_buf();
    let s = TestServer::start(move |c| {
        c.tokens = TOKENS
            .iter()
            .map(|(t, scope)| Token {
                token: (*t).into(),
                scopes: vec![*scope],
                name: None,
            })
            .collect();
        c.model_dir = Some(models);
        c.limits.max_candidates = 50;
        c.limits.max_k = 100;
    })
    .await;
    let c = Client::new();
    let doc = s.openapi().await;
    // The names of checkpoints and models: the pattern the server checks.
    let pattern =
        &doc["components"]["schemas"]["CheckpointRequest"]["properties"]["name"]["pattern"];
    assert_eq!(pattern, siren_http::state::CHILD_NAME_PATTERN);
    let (user, items) = some_user_and_items(&s);
    let mut ids = items[..10].to_vec();
    ids.push(user);
    let mut gen = Gen {
        doc: &doc,
        rng: StdRng::seed_from_u64(14),
        ids,
    };
    let ops = operations(&doc);
    assert_eq!(ops.len(), 16, "operations in the document");
    let tokens: [Option<&str>; 5] = [
        None,
        Some("unknown-0123456789"),
        Some(TOKENS[0].0),
        Some(TOKENS[1].0),
        Some(TOKENS[2].0),
    ];
    let mut mismatches = Vec::new();
    let mut seen = BTreeMap::<(String, u16), usize>::new();
    for op in &ops {
        for i in 0..cases_per_op {
            let case = make_case(&mut gen, op);
            // Each token once, then now and then a random one, otherwise the admin's, which may
            // call every operation, so that bodies get through.
            let token = match i {
                _ if i < tokens.len() => tokens[i],
                _ if i % 4 == 0 => gen.pick(&tokens),
                _ => Some(TOKENS[2].0),
            };
            let mut req = c
                .request(op.method.parse().unwrap(), s.url(&case.url))
                .header("content-type", case.content_type);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = case.body.clone() {
                req = req.body(b);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let text = r.text().await.unwrap();
            *seen
                .entry((format!("{} {}", op.method, op.path), status))
                .or_default() += 1;
            let what = format!(
                "{} {} ({:?}, token {token:?}) -> {status} {text:.300}",
                op.method, case.url, case.mutation
            );
            let mut fail = |why: &str| mismatches.push(format!("{why}: {what}"));
            if !op.statuses.contains(&status) {
                fail("undocumented status");
            }
            let json: Option<Value> = serde_json::from_str(&text).ok();
            if status >= 400 {
                let shape_ok = json.as_ref().is_some_and(|v| {
                    v.as_object().is_some_and(|o| o.len() == 1)
                        && v["error"].as_object().is_some_and(|e| e.len() == 2)
                        && v["error"]["code"].is_string()
                        && v["error"]["message"].is_string()
                });
                if !shape_ok && op.path != "/readyz" {
                    fail("not the error shape");
                }
                if status == 503 && !headers.contains_key("retry-after") && op.path != "/readyz" {
                    fail("503 without Retry-After");
                }
            }
            if status >= 500 && status != 503 {
                fail("a 5xx");
            }
            let code = json
                .as_ref()
                .and_then(|v| v["error"]["code"].as_str())
                .unwrap_or("")
                .to_string();
            match auth_answer(token, op.scope.as_deref()) {
                Some(want) if status != want => fail("the token should have decided"),
                Some(_) => continue,
                None if status == 401 || status == 403 => fail("refused a permitted token"),
                None => {}
            }
            match case.mutation.expected() {
                // A field missing or mistyped is met after the fields before it, which may
                // be refused first (a SemID too long, too many candidates): any refusal of
                // the body will do then.
                Some((400, "invalid_request"))
                    if matches!(
                        case.mutation,
                        Mutation::MissingRequired | Mutation::WrongFieldType
                    ) && matches!(
                        (status, code.as_str()),
                        (400, "invalid_request" | "invalid_argument") | (422, "too_many")
                    ) => {}
                Some((want, want_code)) if (status, code.as_str()) != (want, want_code) => {
                    fail("invalid input not refused as such")
                }
                Some(_) => {}
                None => {
                    let schema_refusal = matches!(
                        (status, code.as_str()),
                        (400, "invalid_json" | "invalid_request") | (413 | 415, _)
                    );
                    if schema_refusal {
                        fail("a schema-valid request refused as not matching the schema");
                    }
                }
            }
            if status == 200 && op.ok_schema.is_object() {
                let schema = gen.resolve(&op.ok_schema);
                let v = json.unwrap_or(Value::Null);
                for k in required(&schema) {
                    if v.get(&k).is_none() {
                        fail(&format!("200 without its required field {k}"));
                    }
                }
            }
        }
    }
    eprintln!("answers by operation and status: {seen:#?}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Each operation answered 200 at least once, and bad input was exercised.
    for op in &ops {
        let key = format!("{} {}", op.method, op.path);
        assert!(
            seen.contains_key(&(key.clone(), 200)),
            "{key} never answered 200"
        );
    }
    assert!(s.running.state.db.verify().is_ok());
    s.running.shutdown().await.unwrap();
}
