//! Constrained decoding: the output is guaranteed to be JSON (OpenAI `response_format`
//! `json_object`) or JSON that validates against a schema (`json_schema`).
//!
//! A schema is compiled into a [`Grammar`] of nodes; a [`Matcher`] is a pushdown automaton over
//! bytes that accepts exactly the prefixes of documents the grammar allows, and whose every
//! state can still reach the end of a document (no dead ends). At each step the tokens whose
//! bytes the matcher accepts are allowed: found by walking a trie of the vocabulary's byte
//! strings with the matcher ([`TokenTrie::allowed`]). EOS is allowed once the document may end;
//! once it is complete, only EOS is.
//!
//! What a schema may use: `type` (one or a list), `properties`, `required`,
//! `additionalProperties`, `items`, `minItems`, `maxItems`, `minLength`, `maxLength`, `enum`,
//! `const`, `anyOf`/`oneOf` whose alternatives start differently (`Optional[X]`), `allOf` of
//! one schema, `$ref` into `$defs`/`definitions` (recursion included), and integer `minimum`,
//! `maximum`, `exclusiveMinimum`, `exclusiveMaximum`. Anything else that constrains (`pattern`,
//! `format`, number bounds, …) is refused naming the keyword's place, rather than generating
//! output that might not validate. Properties are written in the schema's order (optional ones
//! may be left out); no key outside `properties` is written when `properties` is given.

use std::collections::HashMap;

use serde_json::Value;

type NodeId = u32;

/// Nodes every grammar has, for values of any type.
const ANY: NodeId = 0;
const TRUE_FALSE_NULL: NodeId = 1;
const ANY_OBJECT: NodeId = 2;
const ANY_ARRAY: NodeId = 3;
const ANY_STRING: NodeId = 4;
const ANY_NUMBER: NodeId = 5;
/// The largest integer magnitude written (18 digits, within i64).
const INT_LIMIT: i128 = 999_999_999_999_999_999;

/// Consecutive whitespace bytes allowed between tokens (a model must not idle in whitespace).
const MAX_WS: u8 = 24;
/// Digits of an integer (so that it fits in i64).
const MAX_INT_DIGITS: u8 = 18;

#[derive(Debug, Clone)]
enum Node {
    /// Any JSON value.
    Any,
    /// Declared properties, in order: (serialised key with its quotes, value node, required).
    Object {
        props: Vec<(Vec<u8>, NodeId, bool)>,
    },
    /// Any keys; each value of the node (`additionalProperties`, or any value).
    FreeObject {
        values: Option<NodeId>,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Integer {
        min: i128,
        max: i128,
    },
    Number,
    /// Exact texts (enum, const, true/false/null), serialised.
    Literals(Vec<Vec<u8>>),
    /// Alternatives told apart by their first byte.
    Union(Vec<NodeId>),
    /// Not yet compiled (a `$ref` being compiled).
    Pending,
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Grammar {
    nodes: Vec<Node>,
    /// The bytes a value of each node can start with.
    first: Vec<[bool; 256]>,
    root: NodeId,
}

fn base_nodes() -> Vec<Node> {
    vec![
        Node::Any,
        Node::Literals(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]),
        Node::FreeObject { values: None },
        Node::Array {
            items: ANY,
            min: 0,
            max: u32::MAX,
        },
        Node::String {
            min: 0,
            max: u32::MAX,
        },
        Node::Number,
    ]
}

const ANNOTATIONS: [&str; 11] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
];

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
}

fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    fn literals(&mut self, values: &[Value]) -> NodeId {
        let texts = values
            .iter()
            .map(|v| serde_json::to_vec(v).expect("a JSON value serialises"))
            .collect();
        self.push(Node::Literals(texts))
    }

    fn compile(&mut self, s: &Value, path: &str) -> Result<NodeId, String> {
        let o = match s {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return Err(format!("`{path}`: a `false` schema allows nothing")),
            Value::Object(o) => o,
            _ => return Err(format!("`{path}`: a schema must be an object")),
        };
        if let Some(r) = o.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| format!("`{}`: must be a string", at(path, "$ref")))?;
            if let Some(&id) = self.refs.get(r) {
                return Ok(id);
            }
            let target = if r == "#" {
                Some(self.root)
            } else {
                r.strip_prefix('#').and_then(|p| self.root.pointer(p))
            }
            .ok_or_else(|| format!("`{}`: `{r}` is not in this schema", at(path, "$ref")))?;
            let id = self.push(Node::Pending);
            self.refs.insert(r.to_string(), id);
            let body = self.compile(target, r)?;
            self.nodes[id as usize] = self.nodes[body as usize].clone();
            return Ok(id);
        }
        if let Some(v) = o.get("const") {
            return Ok(self.literals(std::slice::from_ref(v)));
        }
        if let Some(v) = o.get("enum") {
            let vs = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("`{}`: must be a non-empty list", at(path, "enum")))?;
            return Ok(self.literals(vs));
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(v) = o.get(key) {
                let alts = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| format!("`{}`: must be a non-empty list", at(path, key)))?;
                if key == "allOf" {
                    if alts.len() > 1 {
                        return Err(format!(
                            "`{}`: more than one schema is not supported by constrained decoding",
                            at(path, key)
                        ));
                    }
                    return self.compile(&alts[0], &at(path, "allOf[0]"));
                }
                let ids = alts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.compile(a, &format!("{}[{i}]", at(path, key))))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.union(ids, &at(path, key));
            }
        }
        let types: Vec<&str> = match o.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(format!(
                    "`{}`: must be a string or a list",
                    at(path, "type")
                ));
            }
        };
        let mut known: Vec<&str> = ANNOTATIONS.to_vec();
        known.extend(["type", "definitions"]);
        let mut ids = Vec::new();
        if types.is_empty() {
            // No type: any value (only annotations may be there).
            if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!(
                    "`{}`: not supported by constrained decoding without a `type`",
                    at(path, k)
                ));
            }
            return Ok(ANY);
        }
        let num = |k: &str| o.get(k).and_then(Value::as_f64);
        for t in &types {
            let (node, keys): (Node, &[&str]) = match *t {
                "object" => (
                    self.object(o, path)?,
                    &["properties", "required", "additionalProperties"],
                ),
                "array" => {
                    let items = match o.get("items") {
                        Some(i) => self.compile(i, &at(path, "items"))?,
                        None => ANY,
                    };
                    let min = num("minItems").unwrap_or(0.0) as u32;
                    let max = num("maxItems").map_or(u32::MAX, |m| m as u32);
                    if min > max {
                        return Err(format!("`{path}`: minItems > maxItems"));
                    }
                    (
                        Node::Array { items, min, max },
                        &["items", "minItems", "maxItems"],
                    )
                }
                "string" => {
                    let min = num("minLength").unwrap_or(0.0) as u32;
                    let max = num("maxLength").map_or(u32::MAX, |m| m as u32);
                    if min > max {
                        return Err(format!("`{path}`: minLength > maxLength"));
                    }
                    (Node::String { min, max }, &["minLength", "maxLength"])
                }
                "integer" => {
                    let bound = |k: &str| -> Result<Option<f64>, String> {
                        match o.get(k) {
                            None => Ok(None),
                            Some(v) => v
                                .as_f64()
                                .map(Some)
                                .ok_or_else(|| format!("`{}`: must be a number", at(path, k))),
                        }
                    };
                    let mut min = -INT_LIMIT;
                    let mut max = INT_LIMIT;
                    if let Some(m) = bound("minimum")? {
                        min = min.max(m.ceil() as i128);
                    }
                    if let Some(m) = bound("exclusiveMinimum")? {
                        min = min.max(m.floor() as i128 + 1);
                    }
                    if let Some(m) = bound("maximum")? {
                        max = max.min(m.floor() as i128);
                    }
                    if let Some(m) = bound("exclusiveMaximum")? {
                        max = max.min(m.ceil() as i128 - 1);
                    }
                    min = min.max(-INT_LIMIT);
                    max = max.min(INT_LIMIT);
                    if min > max {
                        return Err(format!(
                            "`{path}`: no integer of at most 18 digits is within its bounds"
                        ));
                    }
                    (
                        Node::Integer { min, max },
                        &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"],
                    )
                }
                "number" => (Node::Number, &[]),
                "boolean" => (
                    Node::Literals(vec![b"true".to_vec(), b"false".to_vec()]),
                    &[],
                ),
                "null" => (Node::Literals(vec![b"null".to_vec()]), &[]),
                other => {
                    return Err(format!("`{}`: unknown type `{other}`", at(path, "type")));
                }
            };
            known.extend_from_slice(keys);
            ids.push(self.push(node));
        }
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "`{}`: not supported by constrained decoding (the output could not be guaranteed to validate)",
                at(path, k)
            ));
        }
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        self.union(ids, &at(path, "type"))
    }

    fn object(&mut self, o: &serde_json::Map<String, Value>, path: &str) -> Result<Node, String> {
        let required: Vec<&str> = match o.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(format!("`{}`: must be a list", at(path, "required"))),
        };
        let props = match o.get("properties") {
            Some(Value::Object(p)) if !p.is_empty() => p,
            Some(Value::Object(_)) | None => {
                if let Some(r) = required.first() {
                    return Err(format!(
                        "`{}`: `{r}` is required but not among `properties`",
                        at(path, "required")
                    ));
                }
                let values = match o.get("additionalProperties") {
                    None | Some(Value::Bool(true)) => None,
                    Some(Value::Bool(false)) => {
                        return Ok(Node::Object { props: Vec::new() });
                    }
                    Some(s) => Some(self.compile(s, &at(path, "additionalProperties"))?),
                };
                return Ok(Node::FreeObject { values });
            }
            Some(_) => return Err(format!("`{}`: must be an object", at(path, "properties"))),
        };
        if props.len() > 64 {
            return Err(format!(
                "`{}`: more than 64 properties",
                at(path, "properties")
            ));
        }
        if let Some(r) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(format!(
                "`{}`: `{r}` is required but not among `properties`",
                at(path, "required")
            ));
        }
        let mut out = Vec::new();
        for (k, s) in props {
            let id = self.compile(s, &format!("{}.{k}", at(path, "properties")))?;
            let key = serde_json::to_vec(&Value::String(k.clone())).expect("a key serialises");
            out.push((key, id, required.contains(&k.as_str())));
        }
        Ok(Node::Object { props: out })
    }

    /// Alternatives must start with different bytes, so the first byte chooses one.
    fn union(&mut self, ids: Vec<NodeId>, path: &str) -> Result<NodeId, String> {
        let first = first_bytes(&self.nodes);
        let mut seen = [false; 256];
        for &id in &ids {
            let f = &first[id as usize];
            if (0..256).any(|b| f[b] && seen[b]) {
                return Err(format!(
                    "`{path}`: alternatives that can start alike (e.g. two objects) are not supported by constrained decoding"
                ));
            }
            (0..256).for_each(|b| seen[b] |= f[b]);
        }
        Ok(self.push(Node::Union(ids)))
    }
}

/// The bytes each node's values can start with (a fixed point over unions, which may refer to
/// nodes not yet known: those count as any value until they are).
fn first_bytes(nodes: &[Node]) -> Vec<[bool; 256]> {
    let mut first = vec![[false; 256]; nodes.len()];
    let set = |f: &mut [bool; 256], bs: &[u8]| bs.iter().for_each(|&b| f[b as usize] = true);
    for (i, n) in nodes.iter().enumerate() {
        let f = &mut first[i];
        match n {
            Node::Any | Node::Pending => set(f, b"{[\"-0123456789tfn"),
            Node::Object { .. } | Node::FreeObject { .. } => set(f, b"{"),
            Node::Array { .. } => set(f, b"["),
            Node::String { .. } => set(f, b"\""),
            Node::Integer { .. } | Node::Number => set(f, b"-0123456789"),
            Node::Literals(ls) => ls.iter().for_each(|l| set(f, &l[..1])),
            Node::Union(_) => {}
        }
    }
    loop {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            if let Node::Union(ids) = n {
                for &a in ids {
                    let from = first[a as usize];
                    for (to, &f) in first[i].iter_mut().zip(&from) {
                        if f && !*to {
                            *to = true;
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            return first;
        }
    }
}

impl Grammar {
    fn new(nodes: Vec<Node>, root: NodeId) -> Self {
        Self {
            first: first_bytes(&nodes),
            nodes,
            root,
        }
    }

    /// A JSON object, any keys and values (`response_format: json_object`).
    pub fn json_object() -> Self {
        Self::new(base_nodes(), ANY_OBJECT)
    }

    /// Compile a JSON Schema; an error names the place of what cannot be guaranteed.
    pub fn from_schema(schema: &Value) -> Result<Self, String> {
        let mut c = Compiler {
            root: schema,
            nodes: base_nodes(),
            refs: HashMap::new(),
        };
        let root = c.compile(schema, "schema")?;
        Ok(Self::new(c.nodes, root))
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn starts(&self, id: NodeId, b: u8) -> bool {
        self.first[id as usize][b as usize]
    }

    /// The literal texts a frame of `node` matches (a declared object's keys from `base`).
    fn texts(&self, node: NodeId, base: usize) -> &[(Vec<u8>, NodeId, bool)] {
        match self.node(node) {
            Node::Object { props } => &props[base.min(props.len())..],
            _ => &[],
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq)]
enum ObjStage {
    /// Before `{`.
    Start,
    /// After `{`: a key, or `}`.
    Open,
    /// After `,`: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Its value is being read.
    Value,
    /// After a value: `,` or `}`.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArrStage {
    Start,
    Open,
    Comma,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumStage {
    Start,
    Minus,
    Zero,
    Int,
    FracStart,
    Frac,
    ExpStart,
    ExpSign,
    Exp,
}

/// A number being read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Num {
    node: NodeId,
    stage: NumStage,
    neg: bool,
    /// The integer part's value and digits.
    value: u64,
    digits: u8,
    /// Digits of the fraction or exponent being read.
    part: u8,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// Before a value: whitespace, then its first byte.
    Value(NodeId),
    /// `next`: the first declared property not yet passed.
    Obj {
        node: NodeId,
        stage: ObjStage,
        next: u16,
    },
    Arr {
        node: NodeId,
        stage: ArrStage,
        count: u32,
    },
    Str {
        min: u32,
        max: u32,
        chars: u32,
        open: bool,
        /// 0: none; 1: after `\`; 2–5: hex digits of `\u` still due, plus one.
        esc: u8,
        /// UTF-8 continuation bytes still due.
        utf8: u8,
    },
    Num(Num),
    /// The texts of a literals node still possible, a bit each.
    Lit {
        node: NodeId,
        pos: u16,
        mask: u64,
    },
    /// A declared key: the object's keys from `base` still possible.
    Key {
        node: NodeId,
        base: u16,
        pos: u16,
        mask: u64,
    },
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

fn all_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Where a generation is in the grammar: a pushdown automaton over bytes.
#[derive(Debug, PartialEq)]
pub struct Matcher {
    stack: Vec<Frame>,
    ws: u8,
    took_ws: bool,
    complete: bool,
}

impl Clone for Matcher {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
            ws: self.ws,
            took_ws: self.took_ws,
            complete: self.complete,
        }
    }

    /// Reuses the stack's allocation (the trie walk copies a matcher at every node).
    fn clone_from(&mut self, source: &Self) {
        self.stack.clone_from(&source.stack);
        self.ws = source.ws;
        self.took_ws = source.took_ws;
        self.complete = source.complete;
    }
}

impl Matcher {
    pub fn new(g: &Grammar) -> Self {
        Self {
            stack: vec![Frame::Value(g.root)],
            ws: 0,
            took_ws: false,
            complete: false,
        }
    }

    /// The document is whole: only the end may follow.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The document may end here: it is complete, or what is open at the top level is a
    /// number or literal that is whole.
    pub fn can_end(&self, g: &Grammar) -> bool {
        if self.complete {
            return true;
        }
        if self.stack.len() != 1 {
            return false;
        }
        match self.stack[0] {
            Frame::Num(n) => n.can_end(g),
            Frame::Lit { node, pos, mask } => match g.node(node) {
                Node::Literals(ls) => ls
                    .iter()
                    .take(64)
                    .enumerate()
                    .any(|(i, t)| mask & (1 << i) != 0 && t.len() == pos as usize),
                _ => false,
            },
            _ => false,
        }
    }

    /// Take one byte, or refuse it (leaving the matcher as it was) if no document the grammar
    /// allows continues with it.
    pub fn feed(&mut self, g: &Grammar, b: u8) -> bool {
        let saved = self.clone();
        let ok = self.step(g, b);
        if !ok {
            *self = saved;
        }
        ok
    }

    /// Take one byte; after a refusal the matcher is in no defined state (for copies that are
    /// thrown away then, as in the trie walk: no saved copy to make).
    fn step(&mut self, g: &Grammar, b: u8) -> bool {
        if self.complete {
            return false;
        }
        self.took_ws = false;
        let ok = self.read(g, b);
        if ok && !self.took_ws {
            self.ws = 0;
        }
        ok
    }

    /// Feed every byte of `bytes`; false (and the matcher as it was) if one is refused.
    pub fn feed_all(&mut self, g: &Grammar, bytes: &[u8]) -> bool {
        let saved = self.clone();
        for &b in bytes {
            if !self.feed(g, b) {
                *self = saved;
                return false;
            }
        }
        true
    }

    /// Whitespace between tokens, up to [`MAX_WS`] in a row.
    fn space(&mut self) -> bool {
        if self.ws >= MAX_WS {
            return false;
        }
        self.ws += 1;
        self.took_ws = true;
        true
    }

    /// The top value is done: pop it and tell its parent (`key`: the declared key matched).
    fn pop(&mut self, key: Option<u16>) {
        self.stack.pop();
        match self.stack.last_mut() {
            None => self.complete = true,
            Some(Frame::Obj { stage, next, .. }) => {
                if let Some(i) = key {
                    *next += i + 1;
                } else if *stage == ObjStage::Value {
                    *stage = ObjStage::After;
                }
            }
            Some(_) => {}
        }
    }

    fn top(&mut self) -> &mut Frame {
        self.stack.last_mut().expect("a frame")
    }

    fn read(&mut self, g: &Grammar, b: u8) -> bool {
        loop {
            let Some(&frame) = self.stack.last() else {
                return false;
            };
            match frame {
                Frame::Value(id) => {
                    if is_ws(b) {
                        return self.space();
                    }
                    if !g.starts(id, b) {
                        return false;
                    }
                    *self.top() = match g.node(id) {
                        Node::Any => Frame::Value(match b {
                            b'{' => ANY_OBJECT,
                            b'[' => ANY_ARRAY,
                            b'"' => ANY_STRING,
                            b't' | b'f' | b'n' => TRUE_FALSE_NULL,
                            _ => ANY_NUMBER,
                        }),
                        Node::Object { .. } | Node::FreeObject { .. } => Frame::Obj {
                            node: id,
                            stage: ObjStage::Start,
                            next: 0,
                        },
                        Node::Array { .. } => Frame::Arr {
                            node: id,
                            stage: ArrStage::Start,
                            count: 0,
                        },
                        Node::String { min, max } => Frame::Str {
                            min: *min,
                            max: *max,
                            chars: 0,
                            open: false,
                            esc: 0,
                            utf8: 0,
                        },
                        Node::Integer { .. } | Node::Number => Frame::Num(Num {
                            node: id,
                            stage: NumStage::Start,
                            neg: false,
                            value: 0,
                            digits: 0,
                            part: 0,
                        }),
                        Node::Literals(ls) => Frame::Lit {
                            node: id,
                            pos: 0,
                            mask: all_bits(ls.len()),
                        },
                        Node::Union(ids) => match ids.iter().find(|&&a| g.starts(a, b)) {
                            Some(&a) => Frame::Value(a),
                            None => return false,
                        },
                        Node::Pending => return false,
                    };
                }
                Frame::Obj { node, stage, next } => {
                    let declared = match g.node(node) {
                        Node::Object { props } => Some(props.as_slice()),
                        _ => None,
                    };
                    let next_us = next as usize;
                    let required_left =
                        declared.is_some_and(|p| p.iter().skip(next_us).any(|x| x.2));
                    if stage == ObjStage::Start {
                        if b != b'{' {
                            return false;
                        }
                        *self.top() = Frame::Obj {
                            node,
                            stage: ObjStage::Open,
                            next,
                        };
                        return true;
                    }
                    if is_ws(b) && stage != ObjStage::Value {
                        return self.space();
                    }
                    match (stage, b) {
                        (ObjStage::Open, b'}') | (ObjStage::After, b'}') if !required_left => {
                            self.pop(None);
                            return true;
                        }
                        (ObjStage::Open | ObjStage::Key, b'"') => {
                            *self.top() = Frame::Obj {
                                node,
                                stage: ObjStage::Colon,
                                next,
                            };
                            let child = match declared {
                                Some(props) => {
                                    // From `next` up to and including the first required key.
                                    let mut mask = 0u64;
                                    for (i, p) in props.iter().enumerate().skip(next_us) {
                                        mask |= 1 << (i - next_us);
                                        if p.2 {
                                            break;
                                        }
                                    }
                                    if mask == 0 {
                                        return false;
                                    }
                                    Frame::Key {
                                        node,
                                        base: next,
                                        pos: 0,
                                        mask,
                                    }
                                }
                                None => Frame::Str {
                                    min: 0,
                                    max: u32::MAX,
                                    chars: 0,
                                    open: false,
                                    esc: 0,
                                    utf8: 0,
                                },
                            };
                            self.stack.push(child);
                            // The child reads the opening quote.
                        }
                        (ObjStage::Colon, b':') => {
                            let value = match (declared, g.node(node)) {
                                (Some(props), _) => props[next_us - 1].1,
                                (None, Node::FreeObject { values: Some(v) }) => *v,
                                _ => ANY,
                            };
                            *self.top() = Frame::Obj {
                                node,
                                stage: ObjStage::Value,
                                next,
                            };
                            self.stack.push(Frame::Value(value));
                            return true;
                        }
                        (ObjStage::After, b',') => {
                            let more = declared.is_none_or(|p| next_us < p.len());
                            if !more {
                                return false;
                            }
                            *self.top() = Frame::Obj {
                                node,
                                stage: ObjStage::Key,
                                next,
                            };
                            return true;
                        }
                        _ => return false,
                    }
                }
                Frame::Arr { node, stage, count } => {
                    let (items, min, max) = match g.node(node) {
                        Node::Array { items, min, max } => (*items, *min, *max),
                        _ => (ANY, 0, u32::MAX),
                    };
                    let set = |m: &mut Self, stage, count| {
                        *m.top() = Frame::Arr { node, stage, count };
                    };
                    match (stage, b) {
                        (ArrStage::Start, b'[') => {
                            set(self, ArrStage::Open, 0);
                            return true;
                        }
                        (ArrStage::Start, _) => return false,
                        (_, _) if is_ws(b) => return self.space(),
                        (ArrStage::Open, b']') if min == 0 => {
                            self.pop(None);
                            return true;
                        }
                        (ArrStage::Open | ArrStage::Comma, _) => {
                            if count >= max || !g.starts(items, b) {
                                return false;
                            }
                            set(self, ArrStage::After, count + 1);
                            self.stack.push(Frame::Value(items));
                            // The item reads this byte.
                        }
                        (ArrStage::After, b',') if count < max => {
                            set(self, ArrStage::Comma, count);
                            return true;
                        }
                        (ArrStage::After, b']') if count >= min => {
                            self.pop(None);
                            return true;
                        }
                        _ => return false,
                    }
                }
                Frame::Str {
                    min,
                    max,
                    chars,
                    open,
                    esc,
                    utf8,
                } => {
                    let mut set = |chars, esc, utf8| {
                        *self.top() = Frame::Str {
                            min,
                            max,
                            chars,
                            open: true,
                            esc,
                            utf8,
                        };
                        true
                    };
                    if !open {
                        return b == b'"' && set(0, 0, 0);
                    }
                    if utf8 > 0 {
                        return (0x80..=0xBF).contains(&b) && set(chars, 0, utf8 - 1);
                    }
                    return match esc {
                        1 => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                set(chars, 0, 0)
                            }
                            b'u' => set(chars, 5, 0),
                            _ => false,
                        },
                        2..=5 => {
                            b.is_ascii_hexdigit()
                                && set(chars, if esc == 2 { 0 } else { esc - 1 }, 0)
                        }
                        _ => match b {
                            b'"' if chars >= min => {
                                self.pop(None);
                                true
                            }
                            b'"' => false,
                            _ if chars >= max => false,
                            b'\\' => set(chars + 1, 1, 0),
                            0x20..=0x7F => set(chars + 1, 0, 0),
                            0xC2..=0xDF => set(chars + 1, 0, 1),
                            0xE0..=0xEF => set(chars + 1, 0, 2),
                            0xF0..=0xF4 => set(chars + 1, 0, 3),
                            _ => false,
                        },
                    };
                }
                Frame::Num(n) => match n.step(g, b) {
                    Some(next) => {
                        *self.top() = Frame::Num(next);
                        return true;
                    }
                    None if n.can_end(g) => self.pop(None),
                    None => return false,
                },
                Frame::Lit { node, pos, mask } => {
                    let Node::Literals(texts) = g.node(node) else {
                        return false;
                    };
                    match literal_step(texts.iter().map(Vec::as_slice), pos, mask, b) {
                        LitStep::Next(mask) => {
                            *self.top() = Frame::Lit {
                                node,
                                pos: pos + 1,
                                mask,
                            };
                            return true;
                        }
                        LitStep::Done(_) => {
                            self.pop(None);
                            return true;
                        }
                        // A whole literal (a number such as `1`) ends before this byte.
                        LitStep::EndedBefore => self.pop(None),
                        LitStep::No => return false,
                    }
                }
                Frame::Key {
                    node,
                    base,
                    pos,
                    mask,
                } => {
                    let keys = g.texts(node, base as usize);
                    match literal_step(keys.iter().map(|k| k.0.as_slice()), pos, mask, b) {
                        LitStep::Next(mask) => {
                            *self.top() = Frame::Key {
                                node,
                                base,
                                pos: pos + 1,
                                mask,
                            };
                            return true;
                        }
                        LitStep::Done(i) => {
                            self.pop(Some(i));
                            return true;
                        }
                        LitStep::EndedBefore | LitStep::No => return false,
                    }
                }
            }
        }
    }
}

enum LitStep {
    /// Taken; these texts are still possible.
    Next(u64),
    /// Taken, and it completes text `i` (no other text is possible).
    Done(u16),
    /// Not taken, but a text was whole before it.
    EndedBefore,
    No,
}

fn literal_step<'a>(texts: impl Iterator<Item = &'a [u8]>, pos: u16, mask: u64, b: u8) -> LitStep {
    let p = pos as usize;
    let mut next = 0u64;
    let mut whole = false;
    let mut open_after = false;
    let mut last = 0u16;
    for (i, t) in texts.take(64).enumerate() {
        if mask & (1 << i) == 0 {
            continue;
        }
        if t.len() == p {
            whole = true;
        } else if t[p] == b {
            next |= 1 << i;
            last = i as u16;
            open_after |= t.len() > p + 1;
        }
    }
    match (next, open_after) {
        (0, _) if whole => LitStep::EndedBefore,
        (0, _) => LitStep::No,
        (n, false) if n.count_ones() == 1 => LitStep::Done(last),
        (n, _) => LitStep::Next(n),
    }
}

impl Num {
    /// The next state after byte `b`, or None if `b` is not part of the number.
    fn step(self, g: &Grammar, b: u8) -> Option<Num> {
        let (integer, min, max) = match g.node(self.node) {
            Node::Integer { min, max } => (true, *min, *max),
            _ => (false, -INT_LIMIT, INT_LIMIT),
        };
        let Num {
            stage,
            neg,
            value,
            digits,
            part,
            ..
        } = self;
        let f = |stage, neg, value, digits, part| {
            Some(Num {
                stage,
                neg,
                value,
                digits,
                part,
                ..self
            })
        };
        let d = b.wrapping_sub(b'0') as u64;
        match (stage, b) {
            (NumStage::Start, b'-') if min < 0 => f(NumStage::Minus, true, 0, 0, 0),
            (NumStage::Start | NumStage::Minus, b'0') => {
                reachable(neg, 0, false, min, max).then(|| f(NumStage::Zero, neg, 0, 1, 0))?
            }
            (NumStage::Start | NumStage::Minus, b'1'..=b'9') | (NumStage::Int, b'0'..=b'9') => {
                if digits >= MAX_INT_DIGITS {
                    return None;
                }
                let v = value * 10 + d;
                reachable(neg, v as i128, digits + 1 < MAX_INT_DIGITS, min, max)
                    .then(|| f(NumStage::Int, neg, v, digits + 1, 0))?
            }
            (NumStage::Zero | NumStage::Int, b'.') if !integer => {
                f(NumStage::FracStart, neg, value, digits, 0)
            }
            (NumStage::Zero | NumStage::Int | NumStage::Frac, b'e' | b'E') if !integer => {
                f(NumStage::ExpStart, neg, value, digits, 0)
            }
            (NumStage::FracStart | NumStage::Frac, b'0'..=b'9') if part < MAX_FRAC_DIGITS => {
                f(NumStage::Frac, neg, value, digits, part + 1)
            }
            (NumStage::ExpStart, b'+' | b'-') => f(NumStage::ExpSign, neg, value, digits, 0),
            (NumStage::ExpStart | NumStage::ExpSign | NumStage::Exp, b'0'..=b'9')
                if part < MAX_EXP_DIGITS =>
            {
                f(NumStage::Exp, neg, value, digits, part + 1)
            }
            _ => None,
        }
    }

    /// Whether the number may end here (whole, and an integer within its bounds).
    fn can_end(self, g: &Grammar) -> bool {
        let whole = matches!(
            self.stage,
            NumStage::Zero | NumStage::Int | NumStage::Frac | NumStage::Exp
        );
        match g.node(self.node) {
            Node::Integer { min, max } => {
                let v = if self.neg {
                    -(self.value as i128)
                } else {
                    self.value as i128
                };
                whole && (*min..=*max).contains(&v)
            }
            _ => whole,
        }
    }
}

/// Whether an integer whose digits so far make `v` (sign `neg`) can still end within
/// [min, max]: as it is, or (if `can_grow`) with more digits, up to 18 in all.
fn reachable(neg: bool, v: i128, can_grow: bool, min: i128, max: i128) -> bool {
    let meets = |lo: i128, hi: i128| {
        let (lo, hi) = if neg { (-hi, -lo) } else { (lo, hi) };
        lo <= max && hi >= min
    };
    if meets(v, v) {
        return true;
    }
    if !can_grow || v == 0 {
        return false;
    }
    let mut scale: i128 = 1;
    let digits = v.to_string().len();
    for _ in digits..MAX_INT_DIGITS as usize {
        scale *= 10;
        if meets(v * scale, v * scale + scale - 1) {
            return true;
        }
    }
    false
}

const MAX_FRAC_DIGITS: u8 = 16;
const MAX_EXP_DIGITS: u8 = 3;

/// The vocabulary as byte strings in a trie, to find every token a matcher accepts in one walk
/// (tokens sharing a prefix share its bytes' steps).
pub struct TokenTrie {
    children: Vec<Vec<(u8, u32)>>,
    tokens: Vec<Vec<u32>>,
    bytes: Vec<Option<Vec<u8>>>,
    eos: Vec<u32>,
}

impl TokenTrie {
    /// The raw bytes token `id` writes (None: a special token, or an id past the vocabulary).
    pub fn bytes_of(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    /// `bytes[id]`: what token `id` writes (None: a special token, never allowed); `eos`: the
    /// ids that end a generation.
    pub fn new(bytes: Vec<Option<Vec<u8>>>, eos: Vec<u32>) -> Self {
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new()];
        for (id, b) in bytes.iter().enumerate() {
            let Some(b) = b.as_ref().filter(|b| !b.is_empty()) else {
                continue;
            };
            let mut node = 0usize;
            for &byte in b {
                node = match children[node].iter().find(|c| c.0 == byte) {
                    Some(&(_, n)) => n as usize,
                    None => {
                        children.push(Vec::new());
                        tokens.push(Vec::new());
                        let n = children.len() - 1;
                        children[node].push((byte, n as u32));
                        n
                    }
                };
            }
            tokens[node].push(id as u32);
        }
        Self {
            children,
            tokens,
            bytes,
            eos,
        }
    }

    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// Whether the grammar allows token `id` next.
    pub fn accepts(&self, g: &Grammar, m: &Matcher, id: u32) -> bool {
        if self.is_eos(id) {
            return m.can_end(g);
        }
        match self.bytes(id) {
            Some(b) if !b.is_empty() => {
                let mut m = m.clone();
                b.iter().all(|&x| m.step(g, x))
            }
            _ => false,
        }
    }

    /// Every token the grammar allows next (EOS when the document may end).
    pub fn allowed(&self, g: &Grammar, m: &Matcher) -> Vec<u32> {
        let mut out = Vec::new();
        if m.can_end(g) {
            out.extend(&self.eos);
        }
        if m.is_complete() {
            return out;
        }
        let mut states = vec![m.clone()];
        self.walk(g, 0, 0, &mut states, &mut out);
        out
    }

    /// Depth-first over the trie: `states[depth]` is the matcher after this node's bytes; the
    /// deeper entries are reused from node to node (no allocation once they exist).
    fn walk(
        &self,
        g: &Grammar,
        node: usize,
        depth: usize,
        states: &mut Vec<Matcher>,
        out: &mut Vec<u32>,
    ) {
        if states.len() <= depth + 1 {
            states.push(states[depth].clone());
        }
        for &(byte, child) in &self.children[node] {
            let (before, after) = states.split_at_mut(depth + 1);
            after[0].clone_from(&before[depth]);
            if after[0].step(g, byte) {
                out.extend(&self.tokens[child as usize]);
                self.walk(g, child as usize, depth + 1, states, out);
            }
        }
    }
}

/// Set every token the grammar does not allow after `m` to -inf.
pub fn mask_logits(logits: &mut [f32], g: &Grammar, m: &Matcher, trie: &TokenTrie) {
    let allowed = trie.allowed(g, m);
    let mut keep = vec![false; logits.len()];
    for &t in &allowed {
        if let Some(k) = keep.get_mut(t as usize) {
            *k = true;
        }
    }
    if allowed.is_empty() {
        // Cannot happen for a compiled grammar (no state is a dead end); end rather than loop.
        for &t in &trie.eos {
            if let Some(k) = keep.get_mut(t as usize) {
                *k = true;
            }
        }
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(g);
        m.feed_all(g, text.as_bytes()) && m.can_end(g)
    }

    fn prefix_ok(g: &Grammar, text: &str) -> bool {
        Matcher::new(g).feed_all(g, text.as_bytes())
    }

    #[test]
    fn json_object_accepts_objects_only() {
        let g = Grammar::json_object();
        for ok in [
            "{}",
            r#"{"a": 1}"#,
            r#"{"a": [1, 2.5e-3, "x", true, null, {"b": {}}], "c": "\u00e9\n"}"#,
            "  {\n  \"k\" : -0.5 }",
            "{\"é\": \"日本\"}",
        ] {
            assert!(accepts(&g, ok), "{ok}");
        }
        for bad in [
            "[]",
            "1",
            "\"s\"",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": tru}",
            "{}}",
            "{\"a\": 1,}",
        ] {
            assert!(!accepts(&g, bad), "{bad}");
        }
        assert!(prefix_ok(&g, "{\"a\": tr"));
        assert!(!accepts(&g, "{\"a\": 1"), "not whole");
        // Whitespace is bounded.
        assert!(!prefix_ok(&g, &format!("{{{}", " ".repeat(30))));
    }

    #[test]
    fn a_schema_is_followed_key_by_key() {
        let g = Grammar::from_schema(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 5},
                "age": {"type": "integer", "minimum": 18, "maximum": 99},
                "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 2},
                "note": {"type": ["string", "null"]},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "age", "ok"],
            "additionalProperties": false
        }))
        .unwrap();
        for ok in [
            r#"{"name": "Ann", "age": 18, "ok": true}"#,
            r#"{"name":"Bob","age":99,"tags":["a","bc"],"note":null,"ok":false}"#,
            r#"{"name": "Al", "age": 42, "note": "x", "ok": true}"#,
        ] {
            assert!(accepts(&g, ok), "{ok}");
        }
        for bad in [
            r#"{"age": 18, "name": "Ann", "ok": true}"#, // out of order
            r#"{"name": "", "age": 18, "ok": true}"#,    // minLength
            r#"{"name": "Annabel", "age": 18, "ok": true}"#, // maxLength
            r#"{"name": "Ann", "age": 17, "ok": true}"#, // minimum
            r#"{"name": "Ann", "age": 100, "ok": true}"#, // maximum
            r#"{"name": "Ann", "age": 18}"#,             // required
            r#"{"name": "Ann", "age": 18, "tags": ["a", "a", "a"], "ok": true}"#,
            r#"{"name": "Ann", "age": 18, "tags": ["b"], "ok": true}"#,
            r#"{"name": "Ann", "age": 18, "extra": 1, "ok": true}"#,
        ] {
            assert!(!accepts(&g, bad), "{bad}");
        }
        // No dead ends: `1` may become 18..19; `0` and `-` cannot start an age.
        assert!(prefix_ok(&g, r#"{"name": "A", "age": 1"#));
        assert!(!prefix_ok(&g, r#"{"name": "A", "age": 0"#));
        assert!(!prefix_ok(&g, r#"{"name": "A", "age": -"#));
        assert!(
            !prefix_ok(&g, r#"{"name": "A", "age": 2"#)
                || accepts(&g, r#"{"name": "A", "age": 25, "ok": true}"#)
        );
    }

    #[test]
    fn unsupported_keywords_are_named_where_they_are() {
        let e = Grammar::from_schema(
            &json!({"type": "object", "properties": {"id": {"type": "string", "pattern": "^a"}}}),
        )
        .unwrap_err();
        assert!(e.contains("properties.id.pattern"), "{e}");
        let e = Grammar::from_schema(
            &json!({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]}),
        )
        .unwrap_err();
        assert!(e.contains("anyOf") && e.contains("start alike"), "{e}");
        let e = Grammar::from_schema(
            &json!({"type": "object", "required": ["x"], "properties": {"y": {}}}),
        )
        .unwrap_err();
        assert!(e.contains("`x` is required"), "{e}");
    }

    #[test]
    fn refs_and_recursion() {
        let g = Grammar::from_schema(&json!({
            "$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}, "required": ["v"]}},
            "$ref": "#/$defs/Node"
        }))
        .unwrap();
        assert!(accepts(
            &g,
            r#"{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}"#
        ));
        assert!(!accepts(&g, r#"{"v": 1, "kids": [{"w": 2}]}"#));
    }

    #[test]
    fn the_trie_allows_exactly_the_tokens_the_matcher_takes() {
        let vocab: Vec<Option<Vec<u8>>> = [
            "{", "}", "\"", "\"a", "a\"", ":", " 1", "1}", "{\"", "x", "\"b\":", ", ",
        ]
        .iter()
        .map(|s| Some(s.as_bytes().to_vec()))
        .chain([None])
        .collect();
        let trie = TokenTrie::new(vocab.clone(), vec![12]);
        let g = Grammar::from_schema(
            &json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
        )
        .unwrap();
        let mut m = Matcher::new(&g);
        let names = |ids: Vec<u32>| -> Vec<String> {
            ids.iter()
                .map(|&i| {
                    vocab[i as usize]
                        .as_ref()
                        .map_or("<eos>".into(), |b| String::from_utf8_lossy(b).into_owned())
                })
                .collect()
        };
        assert_eq!(names(trie.allowed(&g, &m)), ["{", "{\""]);
        assert!(m.feed_all(&g, b"{"));
        assert_eq!(names(trie.allowed(&g, &m)), ["\"", "\"a"]);
        assert!(m.feed_all(&g, b"\"a\": 1"));
        let mut allowed = names(trie.allowed(&g, &m));
        allowed.sort();
        assert_eq!(allowed, ["1}", "}"]);
        assert!(m.feed_all(&g, b"}"));
        assert_eq!(names(trie.allowed(&g, &m)), ["<eos>"]);
        // Brute force agrees with the walk at every prefix of a document.
        let doc = br#"{"a": 12}"#;
        let mut m = Matcher::new(&g);
        for &b in doc {
            let mut walk = trie.allowed(&g, &m);
            walk.sort();
            let brute: Vec<u32> = (0..vocab.len() as u32)
                .filter(|&t| trie.accepts(&g, &m, t))
                .collect();
            assert_eq!(walk, brute);
            assert!(m.feed(&g, b));
        }
    }
}
