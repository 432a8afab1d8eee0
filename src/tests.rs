//! `#[pg_test]`s: what needs Rust inside a backend.
//!
//! Everything a client can see through SQL (each function, the decision table, every
//! SQLSTATE, the settings, roles, the table) is pinned by the pg_regress files in
//! `tests/regress`, whose expected output documents it and which run on every PostgreSQL
//! version of the matrix. What stays here compares the pure core with PostgreSQL itself at a
//! level SQL cannot reach: the core's jsonb model against the bytes of PostgreSQL's own
//! `jsonb_in`.
use pgrx::prelude::*;

/// The jsonb model of the pure core (its `testing` feature, switched on by `pg_test`), checked
/// here against PostgreSQL's own jsonb bytes.
use idempotency_core::model;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    // ----------------------------------------------------------------------------------
    // The core's jsonb model against PostgreSQL's jsonb_in.

    /// The bytes of `jsonb_in(text)` after the varlena header.
    fn postgres_jsonb(text: &str) -> Vec<u8> {
        let cstring = std::ffi::CString::new(text).unwrap();
        // SAFETY: jsonb_in on a NUL-terminated string returns a jsonb varlena in the current
        // memory context; it is read, not kept.
        unsafe {
            let datum = pgrx::direct_function_call_as_datum(
                pg_sys::jsonb_in,
                &[cstring.as_c_str().into_datum()],
            )
            .expect("jsonb_in returned NULL");
            let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(v);
            let data = pgrx::varlena::vardata_any(v).cast::<u8>();
            std::slice::from_raw_parts(data, len).to_vec()
        }
    }

    fn json_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "5",
            "-0",
            "0.00",
            "-0.00",
            "1.50",
            "1e1",
            "1E+2",
            "1.5e-3",
            "1e300",
            "-1e-64",
            "1e-400",
            "-9.99e999",
            "12345678901234567891",
            "0.000001",
            "123456789.123456789e-20",
            "3.14159265358979323846264338327950288419716939937510",
            "100000000",
            "0.0001",
            "99990000.00001",
            "null",
            "true",
            "false",
            "\"\"",
            "\"x\"",
            "[]",
            "{}",
            "[[],{}]",
            "[\"x\",1,[]]",
            r#"{"bb":null,"a":true,"bb":false}"#,
            r#""héllo wörld €😀 דּ""#,
            r#""esc \" \\ \/ \b \f \n \r \t \u0001 \u001f \u007f \u00e9 \ud83d\ude00""#,
            r#"{"\u20ac":1,"\r":2,"\ufb33":3,"1":4,"\ud83d\ude00":5,"\u0080":6,"\u00f6":7}"#,
            r#"[1,"ab",2.5,"abc",{"k":[true,null]},-7e-3,"é"]"#,
            r#"{"amount": "10.00", "currency": "EUR", "nested": {"z": [1, {"y": "w"}], "a": 0.5}}"#,
            r#"{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Containers with more than JB_OFFSET_STRIDE (32) children, keys of mixed lengths.
        let array: Vec<String> = (0..70)
            .map(|i| match i % 5 {
                0 => format!("{i}"),
                1 => format!("\"s{}\"", "x".repeat(i)),
                2 => format!("{i}.{i}e-{i}"),
                3 => "[true,false,null]".to_owned(),
                _ => format!("{{\"k{i}\":{i}}}"),
            })
            .collect();
        texts.push(format!("[{}]", array.join(",")));
        let object: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "\"{}\":{}",
                    "k".repeat(1 + i % 7) + &i.to_string(),
                    array[i % array.len()]
                )
            })
            .collect();
        texts.push(format!("{{{}}}", object.join(",")));
        let nested: Vec<String> = (0..33)
            .map(|i| {
                let inner: Vec<String> = (0..35).map(|j| format!("{}", i * 1000 + j)).collect();
                format!("\"key{i}\":[{}]", inner.join(","))
            })
            .collect();
        texts.push(format!("{{{}}}", nested.join(",")));
        // Long strings push the offsets past a byte.
        texts.push(format!(
            "[\"{}\",\"{}\",1.5]",
            "long".repeat(100),
            "é😀".repeat(300)
        ));
        let big_object: Vec<String> = (0..100)
            .map(|i| format!("\"{}\":\"{}\"", i, "v".repeat(i)))
            .collect();
        texts.push(format!("{{{}}}", big_object.join(",")));
        texts
    }

    #[pg_test]
    fn jsonb_model_matches_postgres_bytes() {
        let texts = json_texts();
        assert!(texts.len() >= 36);
        for text in &texts {
            let expected = postgres_jsonb(text);
            let model = crate::tests::model::to_jsonb(&crate::tests::model::parse(text));
            assert_eq!(model, expected, "jsonb bytes of {text}");
        }
    }
}
