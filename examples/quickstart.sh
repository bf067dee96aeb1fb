#!/usr/bin/env bash
# Trainyard quickstart: a LoRA finetune (SFT) of the tiny local model through the gateway, a DPO
# finetune on top of it, the models registry, and a chat completion with the result.
#
#   make up                       # gateway :8080 + services :8081-8084 (API key in var/run/admin-key)
#   bash examples/quickstart.sh   # about a minute on a laptop CPU
#   make down
#
# TRAINYARD_URL (default http://127.0.0.1:8080) and TRAINYARD_KEY (default: var/run/admin-key) point it
# at another gateway. TRAINYARD_MODEL is the base model: an absolute path under the model directories
# (default: the tiny model `make model` builds under var/models/tiny-llama) or a hub id.
# Needs curl and jq.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

URL="${TRAINYARD_URL:-http://127.0.0.1:8080}"
KEY="${TRAINYARD_KEY:-$(cat var/run/admin-key)}"
MODEL="${TRAINYARD_MODEL:-$PWD/var/models/tiny-llama}"
if [[ -z "${TRAINYARD_MODEL:-}" && ! -f "$MODEL/config.json" ]]; then
  make model   # builds the tiny model once (a few seconds)
fi

# Every call: the API key header; every call with a body: the JSON content type (without it the
# gateway answers 422 "Input should be a valid dictionary").
call() {  # METHOD PATH [JSON BODY] -> the response body; stops with the error body on any non-2xx
  local body
  if ! body=$(curl -sS --fail-with-body -X "$1" "$URL$2" \
                -H "x-portkey-api-key: $KEY" \
                -H "content-type: application/json" \
                ${3:+--data "$3"}); then
    echo "$1 $2 failed: $body" >&2
    return 1
  fi
  echo "$body"
}

upload() {  # FILE TYPE(training|validation) -> the dataset id
  local created id
  # 1. create the dataset: an id, a signed upload URL and the object key it will have
  created=$(call POST /v1/datasets "{\"name\": \"$(basename "$1")\", \"type\": \"$2\"}")
  id=$(jq -r .data.id <<<"$created")
  # 2. PUT the file to the signed URL: no API key, the URL itself is the credential
  curl -sS --fail-with-body -X PUT --data-binary "@$1" "$(jq -r .data.signed_url <<<"$created")" >/dev/null
  # 3. attach the uploaded file to the dataset (records its size)
  call PUT "/v1/datasets/$id" "{\"s3_path\": $(jq .data.s3_path <<<"$created")}" >/dev/null
  echo "$id"
}

wait_status() {  # FINETUNE_ID STATUS... -> waits (up to 15 minutes) until the status is one of them; prints it
  local status
  for _ in $(seq 1800); do
    status=$(call GET "/v1/finetune/$1" | jq -r .data.status)
    for want in "${@:2}"; do [[ "$status" == "$want" ]] && { echo "$status"; return; }; done
    sleep 0.5
  done
  echo "finetune $1 still $status after 15 minutes" >&2; exit 1
}

finetune() {  # NAME PROVIDER MODEL HYPERPARAMETERS TRAIN_FILE VALIDATION_FILE -> the finetune id, completed
  local train val id status
  train=$(upload "$5" training)
  val=$(upload "$6" validation)
  id=$(call POST /v1/finetune "{\"name\": \"$1\", \"provider\": \"$2\", \"model\": \"$3\",
                               \"hyperparameters\": $4}" | jq -r .data.id)
  call PUT "/v1/finetune/$id" "{\"training_dataset_id\": \"$train\", \"validation_dataset_id\": \"$val\"}" >/dev/null
  call POST "/v1/finetune/$id/validation/start" >/dev/null
  status=$(wait_status "$id" pk_dataset_validation_successfull pk_dataset_validation_failed)
  if [[ "$status" != pk_dataset_validation_successfull ]]; then
    call GET "/v1/finetune/$id" | jq .data.validation >&2; exit 1
  fi
  call POST "/v1/finetune/$id/start" '{}' >/dev/null
  status=$(wait_status "$id" completed failed cancelled)
  if [[ "$status" != completed ]]; then
    call GET "/v1/finetune/$id" | jq .data.error >&2; exit 1
  fi
  echo "$id"
}

# SFT: LoRA on the chat rows of examples/sft (list reversal). The defaults are tuned for real models;
# the tiny model needs a higher learning rate and a fixed number of steps to learn visibly.
SFT_HP='{"method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 0.005,
         "batch_size": 8, "max_steps": 60, "eval_steps": 20, "logging_steps": 5,
         "max_sequence_length": 128, "precision": "fp32"}'
SFT_ID=$(finetune "reverse words (sft)" huggingface "$MODEL" "$SFT_HP" examples/sft/train.jsonl examples/sft/validation.jsonl)
echo "SFT finetune $SFT_ID:"
call GET "/v1/finetune/$SFT_ID" | jq -c '.data | {status, fine_tuned_model, output_uri,
    eval_loss_before: .metrics.eval_loss_before, eval_loss: .metrics.eval_loss}'

# DPO: preference rows of examples/dpo, starting from the SFT result (a completed finetune of this
# workspace may be the base model, by its id or its model id ft:<finetune id>).
DPO_HP='{"beta": 0.1, "learning_rate": 0.005, "batch_size": 8, "max_steps": 20, "logging_steps": 5,
         "max_sequence_length": 128, "precision": "fp32"}'
DPO_ID=$(finetune "reverse words (dpo)" dpo "ft:$SFT_ID" "$DPO_HP" examples/dpo/train.jsonl examples/dpo/validation.jsonl)
echo "DPO finetune $DPO_ID:"
call GET "/v1/finetune/$DPO_ID" | jq -c '.data | {status, fine_tuned_model, output_uri,
    reward_accuracy_before: .metrics.reward_accuracy_before, reward_accuracy: .metrics.reward_accuracy,
    eval_loss_before: .metrics.eval_loss_before, eval_loss: .metrics.eval_loss}'

# The models registry: the catalog's base models and this workspace's fine-tuned models (OpenAI's shape).
echo "models:"
call GET /v1/models | jq -r '.data[].id'

# A chat completion with the SFT model, OpenAI's route and body. OpenAI clients send the key as
# "Authorization: Bearer"; the gateway takes it there as well as in x-portkey-api-key.
echo "chat with ft:$SFT_ID:"
curl -sS --fail-with-body -X POST "$URL/v1/chat/completions" \
  -H "Authorization: Bearer $KEY" \
  -H "content-type: application/json" \
  --data "{\"model\": \"ft:$SFT_ID\", \"max_tokens\": 24, \"temperature\": 0,
           \"messages\": [{\"role\": \"user\", \"content\": \"reverse: fish, hat, apple\"}]}" \
  | jq -r '.choices[0].message.content'
