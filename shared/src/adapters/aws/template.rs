//! The stack's shape, read from `template.yaml`: the tables, queues, secrets
//! and buses `maof bootstrap` creates locally, so that local and deployed
//! resources cannot drift. Only what creating them needs is evaluated: `!Ref`
//! and `!Sub` of parameters and pseudo parameters, `!FindInMap`, and
//! `!GetAtt X.Arn` between queues.

use std::collections::HashMap;

use serde_norway::Value;

/// The template of this build, embedded so that `maof` runs from anywhere.
pub const TEMPLATE: &str = include_str!("../../../../template.yaml");

#[derive(Debug, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(String);

fn err(message: impl Into<String>) -> TemplateError {
    TemplateError(message.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyElement {
    pub attribute: String,
    /// `HASH` or `RANGE`.
    pub key_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexShape {
    pub name: String,
    pub keys: Vec<KeyElement>,
    pub projection: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub name: String,
    /// Attribute name and type (`S`, `N`, `B`).
    pub attributes: Vec<(String, String)>,
    pub keys: Vec<KeyElement>,
    pub indexes: Vec<IndexShape>,
    pub ttl_attribute: Option<String>,
    /// The stream's view type (`NEW_AND_OLD_IMAGES`), when the table has one.
    pub stream_view: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueShape {
    pub logical_id: String,
    pub name: String,
    pub visibility_timeout: Option<u64>,
    pub retention: Option<u64>,
    /// `MaximumMessageSize`, in bytes.
    pub max_message_size: Option<u64>,
    /// The logical id of the dead-letter queue and the receives before redrive.
    pub dead_letter: Option<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateShape {
    pub tables: Vec<TableShape>,
    pub queues: Vec<QueueShape>,
    /// Names of secrets the stack creates (with generated values).
    pub secrets: Vec<String>,
    pub event_buses: Vec<String>,
    /// Logical ids of S3 buckets (their names are CloudFormation's to choose).
    pub buckets: Vec<String>,
}

struct Context<'a> {
    parameters: HashMap<String, String>,
    mappings: Option<&'a Value>,
}

impl Context<'_> {
    fn tag(value: &Value) -> Option<(String, &Value)> {
        match value {
            Value::Tagged(tagged) => Some((
                tagged.tag.to_string().trim_start_matches('!').to_owned(),
                &tagged.value,
            )),
            // The long form: `{"Fn::Sub": ...}` / `{"Ref": ...}`.
            Value::Mapping(map) if map.len() == 1 => {
                let (key, inner) = map.iter().next()?;
                let key = key.as_str()?;
                match key {
                    "Ref" => Some(("Ref".into(), inner)),
                    k if k.starts_with("Fn::") => {
                        Some((k.trim_start_matches("Fn::").into(), inner))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A scalar value, with intrinsic functions evaluated.
    fn scalar(&self, value: &Value) -> Result<String, TemplateError> {
        if let Some((function, arg)) = Self::tag(value) {
            return match function.as_str() {
                "Ref" => {
                    let name = arg.as_str().ok_or_else(|| err("!Ref of a non-string"))?;
                    self.parameters
                        .get(name)
                        .cloned()
                        .ok_or_else(|| err(format!("!Ref {name}: not a parameter")))
                }
                "Sub" => {
                    let text = arg
                        .as_str()
                        .ok_or_else(|| err("!Sub with variables is not supported here"))?;
                    self.substitute(text)
                }
                "FindInMap" => {
                    let args = arg
                        .as_sequence()
                        .ok_or_else(|| err("!FindInMap needs a list"))?;
                    let [map, key, field] = args.as_slice() else {
                        return Err(err("!FindInMap needs three items"));
                    };
                    let (map, key, field) =
                        (self.scalar(map)?, self.scalar(key)?, self.scalar(field)?);
                    let found = self
                        .mappings
                        .and_then(|m| m.get(&map))
                        .and_then(|m| m.get(&key))
                        .and_then(|m| m.get(&field))
                        .ok_or_else(|| {
                            err(format!("!FindInMap [{map}, {key}, {field}]: no such entry"))
                        })?;
                    self.scalar(found)
                }
                other => Err(err(format!("intrinsic {other} is not supported here"))),
            };
        }
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(err("expected a scalar")),
        }
    }

    fn substitute(&self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| err(format!("unclosed ${{ in {text}")))?;
            let name = &rest[start + 2..start + end];
            let value = self
                .parameters
                .get(name)
                .ok_or_else(|| err(format!("${{{name}}} in !Sub: not a parameter")))?;
            out.push_str(value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn number(&self, value: Option<&Value>) -> Result<Option<u64>, TemplateError> {
        value
            .map(|v| {
                self.scalar(v)?
                    .parse()
                    .map_err(|_| err("expected a whole number"))
            })
            .transpose()
    }

    fn keys(&self, value: Option<&Value>) -> Result<Vec<KeyElement>, TemplateError> {
        let Some(list) = value.and_then(Value::as_sequence) else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|k| {
                Ok(KeyElement {
                    attribute: self.scalar(
                        k.get("AttributeName")
                            .ok_or_else(|| err("key without AttributeName"))?,
                    )?,
                    key_type: self
                        .scalar(k.get("KeyType").ok_or_else(|| err("key without KeyType"))?)?,
                })
            })
            .collect()
    }
}

impl TemplateShape {
    /// Reads the resources of `template`, with `overrides` on the parameters'
    /// defaults (e.g. `Prefix`). Pseudo parameters are those of a local
    /// emulator: region `AWS_REGION` or us-east-1, account 123456789012.
    pub fn parse(
        template: &str,
        overrides: &HashMap<String, String>,
    ) -> Result<Self, TemplateError> {
        let doc: Value = serde_norway::from_str(template).map_err(|e| err(e.to_string()))?;
        let mut parameters = HashMap::from([
            (
                "AWS::Region".to_owned(),
                std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            ),
            ("AWS::AccountId".to_owned(), "123456789012".to_owned()),
            ("AWS::Partition".to_owned(), "aws".to_owned()),
            ("AWS::StackName".to_owned(), "maof".to_owned()),
            ("AWS::URLSuffix".to_owned(), "amazonaws.com".to_owned()),
        ]);
        if let Some(declared) = doc.get("Parameters").and_then(Value::as_mapping) {
            for (name, spec) in declared {
                let (Some(name), Some(default)) = (name.as_str(), spec.get("Default")) else {
                    continue;
                };
                let default = match default {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                parameters.insert(name.to_owned(), default);
            }
        }
        parameters.extend(overrides.clone());
        let cx = Context {
            parameters,
            mappings: doc.get("Mappings"),
        };
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| err("no Resources"))?;
        let mut shape = TemplateShape::default();
        for (logical_id, resource) in resources {
            let logical_id = logical_id.as_str().unwrap_or_default().to_owned();
            let kind = resource
                .get("Type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let empty = Value::Mapping(Default::default());
            let props = resource.get("Properties").unwrap_or(&empty);
            let name = |field: &str| -> Result<String, TemplateError> {
                cx.scalar(
                    props
                        .get(field)
                        .ok_or_else(|| err(format!("{logical_id} has no {field}")))?,
                )
            };
            match kind {
                "AWS::DynamoDB::Table" => {
                    let attributes = props
                        .get("AttributeDefinitions")
                        .and_then(Value::as_sequence)
                        .map(|list| {
                            list.iter()
                                .map(|a| {
                                    Ok((
                                        cx.scalar(
                                            a.get("AttributeName")
                                                .ok_or_else(|| err("attribute without name"))?,
                                        )?,
                                        cx.scalar(
                                            a.get("AttributeType")
                                                .ok_or_else(|| err("attribute without type"))?,
                                        )?,
                                    ))
                                })
                                .collect::<Result<Vec<_>, TemplateError>>()
                        })
                        .transpose()?
                        .unwrap_or_default();
                    let indexes = props
                        .get("GlobalSecondaryIndexes")
                        .and_then(Value::as_sequence)
                        .map(|list| {
                            list.iter()
                                .map(|i| {
                                    Ok(IndexShape {
                                        name: cx.scalar(
                                            i.get("IndexName")
                                                .ok_or_else(|| err("index without name"))?,
                                        )?,
                                        keys: cx.keys(i.get("KeySchema"))?,
                                        projection: i
                                            .get("Projection")
                                            .and_then(|p| p.get("ProjectionType"))
                                            .map(|p| cx.scalar(p))
                                            .transpose()?
                                            .unwrap_or_else(|| "ALL".into()),
                                    })
                                })
                                .collect::<Result<Vec<_>, TemplateError>>()
                        })
                        .transpose()?
                        .unwrap_or_default();
                    let ttl_attribute = props
                        .get("TimeToLiveSpecification")
                        .filter(|t| t.get("Enabled").and_then(Value::as_bool).unwrap_or(false))
                        .and_then(|t| t.get("AttributeName"))
                        .map(|a| cx.scalar(a))
                        .transpose()?;
                    let stream_view = props
                        .get("StreamSpecification")
                        .and_then(|s| s.get("StreamViewType"))
                        .map(|v| cx.scalar(v))
                        .transpose()?;
                    shape.tables.push(TableShape {
                        name: name("TableName")?,
                        attributes,
                        keys: cx.keys(props.get("KeySchema"))?,
                        indexes,
                        ttl_attribute,
                        stream_view,
                    });
                }
                "AWS::SQS::Queue" => {
                    let dead_letter = match props.get("RedrivePolicy") {
                        Some(policy) => {
                            let target = policy
                                .get("deadLetterTargetArn")
                                .ok_or_else(|| err("redrive without target"))?;
                            let target = match Context::tag(target) {
                                Some((f, arg)) if f == "GetAtt" => {
                                    let text = match arg {
                                        Value::String(s) => s.clone(),
                                        Value::Sequence(parts) => parts
                                            .iter()
                                            .filter_map(Value::as_str)
                                            .collect::<Vec<_>>()
                                            .join("."),
                                        _ => return Err(err("bad !GetAtt")),
                                    };
                                    text.trim_end_matches(".Arn").to_owned()
                                }
                                _ => {
                                    return Err(err(format!(
                                        "{logical_id}: the DLQ must be !GetAtt <Queue>.Arn"
                                    )));
                                }
                            };
                            let receives = cx.number(policy.get("maxReceiveCount"))?.unwrap_or(5);
                            Some((target, receives))
                        }
                        None => None,
                    };
                    shape.queues.push(QueueShape {
                        logical_id: logical_id.clone(),
                        name: name("QueueName")?,
                        visibility_timeout: cx.number(props.get("VisibilityTimeout"))?,
                        retention: cx.number(props.get("MessageRetentionPeriod"))?,
                        max_message_size: cx.number(props.get("MaximumMessageSize"))?,
                        dead_letter,
                    });
                }
                "AWS::SecretsManager::Secret" => shape.secrets.push(name("Name")?),
                "AWS::Events::EventBus" => shape.event_buses.push(name("Name")?),
                "AWS::S3::Bucket" => shape.buckets.push(logical_id.clone()),
                _ => {}
            }
        }
        Ok(shape)
    }

    /// Queues ordered so that every dead-letter queue comes before the queues
    /// redriving to it.
    pub fn queues_in_creation_order(&self) -> Vec<&QueueShape> {
        let (dlqs, work): (Vec<&QueueShape>, Vec<&QueueShape>) =
            self.queues.iter().partition(|q| q.dead_letter.is_none());
        dlqs.into_iter().chain(work).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_template_declares_the_pipeline() {
        let overrides = HashMap::from([("Prefix".to_owned(), "x".to_owned())]);
        let shape = TemplateShape::parse(TEMPLATE, &overrides).unwrap();
        let tables: Vec<&str> = shape.tables.iter().map(|t| t.name.as_str()).collect();
        assert!(
            tables.contains(&"x-context") && tables.contains(&"x-registry"),
            "{tables:?}"
        );
        let context = shape.tables.iter().find(|t| t.name == "x-context").unwrap();
        assert_eq!(context.indexes[0].name, "gsi1");
        assert_eq!(context.ttl_attribute.as_deref(), Some("expires_at"));
        assert_eq!(context.stream_view.as_deref(), Some("NEW_AND_OLD_IMAGES"));
        for q in ["x-route", "x-agent-call", "x-aggregate"] {
            let queue = shape
                .queues
                .iter()
                .find(|s| s.name == q)
                .unwrap_or_else(|| panic!("{q}"));
            let (dlq, receives) = queue.dead_letter.clone().unwrap();
            assert_eq!(receives, 5);
            let dlq = shape.queues.iter().find(|s| s.logical_id == dlq).unwrap();
            assert_eq!(dlq.name, format!("{q}-dlq"));
            assert!(queue.visibility_timeout.unwrap() > 0);
            assert_eq!(
                queue.max_message_size,
                Some(crate::ports::queue::MAX_MESSAGE_BYTES as u64),
                "the template pins the message size the memory queue enforces"
            );
        }
        assert!(shape.secrets.contains(&"x/jwt".to_owned()));
        let order = shape.queues_in_creation_order();
        let position = |name: &str| order.iter().position(|q| q.name == name).unwrap();
        assert!(position("x-route-dlq") < position("x-route"));
    }

    #[test]
    fn intrinsics_evaluate() {
        let template = r#"
Parameters:
  Prefix: {Type: String, Default: p}
  Timeout: {Type: Number, Default: 30}
Mappings:
  Vis: {"30": {Seconds: 210}}
Resources:
  Dlq:
    Type: AWS::SQS::Queue
    Properties: {QueueName: !Sub "${Prefix}-dlq"}
  Q:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: {"Fn::Sub": "${Prefix}-q"}
      VisibilityTimeout: !FindInMap [Vis, !Ref Timeout, Seconds]
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 3}
"#;
        let shape = TemplateShape::parse(template, &HashMap::new()).unwrap();
        let q = shape.queues.iter().find(|q| q.logical_id == "Q").unwrap();
        assert_eq!(q.name, "p-q");
        assert_eq!(q.visibility_timeout, Some(210));
        assert_eq!(q.dead_letter, Some(("Dlq".into(), 3)));
        let bad = template.replace("!Ref Timeout", "!Ref Nope");
        assert!(TemplateShape::parse(&bad, &HashMap::new()).is_err());
    }
}
