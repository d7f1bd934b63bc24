//! `builtin:echo`: an upstream inside the gateway that answers 200 with a
//! JSON echo of the request it received (after the gateway's rewriting), so
//! the shipped `gateway.toml` shows what an upstream would see.

use http::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::body::Body;
use crate::error::json_response;

pub fn respond<B>(req: &Request<B>, path: &str) -> Response<Body> {
    let mut headers = Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        headers.insert(name.as_str().to_string(), value);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "headers": headers,
        }),
    )
}
