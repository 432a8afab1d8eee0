//! The request bodies' checks (docs/http.md part 2, "Checks before anything is claimed"): what
//! a payment and a refund must hold. A failed check is its `detail` (400 `invalid_request`).

use serde_json::{Map, Value};

/// A payment's body, checked.
pub struct PaymentBody {
    pub amount: String,
    pub currency: String,
    pub card: String,
    pub description: Option<String>,
}

/// `amount`: a decimal string, > 0, at most 2 decimals (and at most 12 integer digits, what
/// the table holds).
pub fn valid_amount(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && int.len() <= 12
        && digits(int)
        && (int == "0" || !int.starts_with('0'))
        && (!s.contains('.') || (1..=2).contains(&frac.len()))
        && digits(frac)
        && s.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// The body as an object with no member outside `allowed`.
fn object<'a>(v: &'a Value, allowed: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let o = v.as_object().ok_or("The body must be a JSON object.")?;
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("Unknown member {k:?}."));
    }
    Ok(o)
}

fn amount_of(o: &Map<String, Value>) -> Result<String, String> {
    match o.get("amount") {
        Some(Value::String(a)) if valid_amount(a) => Ok(a.clone()),
        _ => Err(
            "amount must be a decimal string above 0 with at most 2 decimals, like \"10.00\"."
                .into(),
        ),
    }
}

/// `POST /v1/payments`: `{"amount", "currency", "card", "description"?}`.
pub fn payment_body(v: &Value) -> Result<PaymentBody, String> {
    let o = object(v, &["amount", "currency", "card", "description"])?;
    let amount = amount_of(o)?;
    let currency = match o.get("currency") {
        Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
            c.clone()
        }
        _ => return Err("currency must be 3 upper-case letters, like \"EUR\".".into()),
    };
    let card = match o.get("card") {
        Some(Value::String(c))
            if !c.is_empty() && c.len() <= 255 && c.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            c.clone()
        }
        _ => return Err("card must be a non-empty token, like \"tok_visa\".".into()),
    };
    let description = match o.get("description") {
        None => None,
        Some(Value::String(d)) if d.len() <= 1000 => Some(d.clone()),
        _ => return Err("description must be a string of at most 1000 bytes.".into()),
    };
    Ok(PaymentBody {
        amount,
        currency,
        card,
        description,
    })
}

/// `POST /v1/payments/{id}/refunds`: `{"amount"}`, the amount.
pub fn refund_amount(v: &Value) -> Result<String, String> {
    object(v, &["amount"]).and_then(amount_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts() {
        for ok in ["10.00", "0.01", "1", "10.5", "999999999999.99", "0.10"] {
            assert!(valid_amount(ok), "{ok}");
        }
        for bad in [
            "0",
            "0.00",
            "",
            ".5",
            "1.",
            "1.234",
            "-1",
            "+1",
            "1e2",
            "01",
            "1,00",
            " 1",
            "1000000000000",
            "١",
        ] {
            assert!(!valid_amount(bad), "{bad}");
        }
    }

    #[test]
    fn payment_bodies() {
        assert!(
            payment_body(&json!({"amount": "10.00", "currency": "EUR", "card": "tok_visa"}))
                .is_ok()
        );
        assert!(payment_body(
            &json!({"amount": "10.00", "currency": "EUR", "card": "tok_visa", "description": "x"})
        )
        .is_ok());
        for bad in [
            json!([]),
            json!({"amount": 10, "currency": "EUR", "card": "tok_visa"}),
            json!({"amount": "10.00", "currency": "eur", "card": "tok_visa"}),
            json!({"amount": "10.00", "currency": "EURO", "card": "tok_visa"}),
            json!({"amount": "10.00", "currency": "EUR", "card": ""}),
            json!({"amount": "10.00", "currency": "EUR"}),
            json!({"amount": "10.00", "currency": "EUR", "card": "tok_visa", "description": 5}),
            json!({"amount": "10.00", "currency": "EUR", "card": "tok_visa", "extra": 1}),
        ] {
            assert!(payment_body(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refund_bodies() {
        assert_eq!(refund_amount(&json!({"amount": "5.00"})), Ok("5.00".into()));
        for bad in [
            json!({}),
            json!({"amount": "0"}),
            json!({"amount": "5.00", "currency": "EUR"}),
            json!("5.00"),
        ] {
            assert!(refund_amount(&bad).is_err(), "{bad}");
        }
    }
}
