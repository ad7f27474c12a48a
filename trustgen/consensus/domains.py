"""Every domain tag and personalisation string trustgen hashes or signs with, in one list.

A tag makes bytes hashed or signed for one purpose useless for any other: an entry hash can never
be taken for a message id, a session key for a frame tag of another protocol. Values are part of
the protocol (docs/protocol.md) and must never change; a new meaning gets a new tag.

Modules in consensus/ and the layers above (gossip/, training/) import these constants. engines/
may not import consensus/ (the import contracts in pyproject.toml), so the engine tags below are
also defined in engines/ and tests/test_protocol_vectors.py holds the two copies equal.
"""

from __future__ import annotations

# -- signed messages and the ledger (consensus/) --------------------------------------------------

# First bytes of every signed payload: SIGNED_MAGIC ‖ encode([type, network, version, body]).
SIGNED_MAGIC = b"TGv1"
# Message id = sha256(MESSAGE_ID ‖ signed payload).
MESSAGE_ID = b"trustgen/id/v1\0"
# Ledger entry hash = sha256(ENTRY_HASH ‖ signed payload ‖ signature).
ENTRY_HASH = b"trustgen/entry/v1\0"
# RFC 6962 Merkle leaf hash = sha256(MERKLE_LEAF ‖ data).
MERKLE_LEAF = b"\x00"
# RFC 6962 Merkle interior node hash = sha256(MERKLE_NODE ‖ left ‖ right).
MERKLE_NODE = b"\x01"
# Verifier ranking key = sha256(ASSIGN ‖ beacon ‖ task id ‖ verifier key).
ASSIGN = b"trustgen/assign/v1\0"

# -- gossip (gossip/) -----------------------------------------------------------------------------

# BLAKE2b personalisation of the session key derivation and of every session frame tag.
GOSSIP_SESSION = b"trustgen-gsv1"
# Anti-entropy digest of all feed heads = sha256(GOSSIP_HEADS ‖ (feed ‖ u64 seq ‖ hash)...).
GOSSIP_HEADS = b"trustgen/heads/v1\0"
# Per-bucket digest of feed heads = sha256(GOSSIP_BUCKET ‖ (feed ‖ u64 seq ‖ hash)...)[:8].
GOSSIP_BUCKET = b"trustgen/bucket/v1\0"

# -- engines (engines/; copies held equal by the tests) --------------------------------------------

# Sampling noise key = BLAKE2b-64(GUMBEL_NOISE ‖ u64le seed ‖ u64le position); no NUL terminator.
GUMBEL_NOISE = b"trustgen/gumbel/v1"
# Text output digest = sha256(TEXT_OUTPUT ‖ token ids as u32le).
TEXT_OUTPUT = b"trustgen/text-output/v1\0"
# Image output digest = sha256(IMAGE_OUTPUT ‖ u32le height, width, channels ‖ HWC uint8 pixels).
IMAGE_OUTPUT = b"trustgen/image-output/v1\0"
# Denoising trajectory leaf = sha256(TRAJECTORY_LEAF ‖ u32le role (0 latent, 1 model output) ‖ u32le
# index ‖ u8 len ‖ dtype name ‖ u8 ndim ‖ u32le dims ‖ raw little-endian bytes); the RFC 6962 root
# over the leaves is the trajectory commitment of an image result.
TRAJECTORY_LEAF = b"trustgen/trajectory-leaf/v1\0"
# Model digest = sha256(MODEL_MANIFEST ‖ one "path\0size\0sha256hex\n" line per file).
MODEL_MANIFEST = b"trustgen/model-manifest/v1\n"

# -- verification (verifier/) ---------------------------------------------------------------------

# Steps a trajectory check re-executes: sha256(TRAJECTORY_CHALLENGE ‖ beacon ‖ root ‖ output digest
# ‖ u32le counter) drives a partial Fisher-Yates shuffle of the step indices.
TRAJECTORY_CHALLENGE = b"trustgen/trajectory-challenge/v1\0"
# Audit draw: sha256(VERIFY_AUDIT ‖ beacon ‖ task id)[:8] / 2^64 < audit fraction -> full regeneration.
VERIFY_AUDIT = b"trustgen/verify-audit/v1\0"

# -- training (training/; verifiable training jobs, docs/protocol.md section 15) ---------------------

# Job id = sha256(TRAINING_JOB ‖ canonical encoding of the job spec).
TRAINING_JOB = b"trustgen/training-job/v1\0"
# Held-out split: sha256(TRAIN_SPLIT ‖ data set digest ‖ u64 window index)[:8] mod 1000 < permille.
TRAIN_SPLIT = b"trustgen/train/split/v1\0"
# Sample i of a trainer's batch: sha256(TRAIN_SELECT ‖ job id ‖ u64 step ‖ trainer key ‖ u32 i)[:8].
TRAIN_SELECT = b"trustgen/train/select/v1\0"
# SPSA direction seed = sha256(TRAIN_SPSA_Z ‖ job id ‖ u64 step)[:8] >> 1.
TRAIN_SPSA_Z = b"trustgen/train/spsa-z/v1\0"
# Tensor set digest = sha256(TENSORS ‖ (head, bytes) per tensor in name order).
TENSORS = b"trustgen/tensors/v1\0"
# Local-SGD inner state digest: the tensor set digest with TRAIN_INNER_STATE ‖ u64 step for TENSORS.
TRAIN_INNER_STATE = b"trustgen/train/inner-state/v1\0"
# Checkpoint digest: the tensor set digest with TRAIN_CHECKPOINT for TENSORS.
TRAIN_CHECKPOINT = b"trustgen/train/checkpoint/v1\0"
# Challenged inner step = 1 + sha256(TRAIN_CHALLENGE ‖ job id ‖ u64 round ‖ trainer ‖ updates digest)[:8] mod H.
TRAIN_CHALLENGE = b"trustgen/train/challenge/v1\0"
# Updates digest = sha256(TRAIN_UPDATES ‖ canonical encoding of the list of update ids).
TRAIN_UPDATES = b"trustgen/train/updates/v1\0"
# Network rounds: the verifier ranking target of round r = sha256(TRAIN_ROUND ‖ job id ‖ u64 r), and
# whether an update's challenged step is re-executed: sha256(TRAIN_CHECK_COIN ‖ job ‖ u64 r ‖ trainer
# ‖ updates digest)[:8] / 2^64 < check probability.
TRAIN_ROUND = b"trustgen/train/round/v1\0"
TRAIN_CHECK_COIN = b"trustgen/train/check-coin/v1\0"
# SPSA on the network: the verifier ranking target of global step t = sha256(TRAIN_STEP ‖ job id ‖
# u64 t), its own tag so a step's target never equals a block's (TRAIN_ROUND) target.
TRAIN_STEP = b"trustgen/train/step/v1\0"

# Every tag by name, for the protocol document, its test vectors and the uniqueness check.
ALL: dict[str, bytes] = {
    "SIGNED_MAGIC": SIGNED_MAGIC,
    "MESSAGE_ID": MESSAGE_ID,
    "ENTRY_HASH": ENTRY_HASH,
    "MERKLE_LEAF": MERKLE_LEAF,
    "MERKLE_NODE": MERKLE_NODE,
    "ASSIGN": ASSIGN,
    "GOSSIP_SESSION": GOSSIP_SESSION,
    "GOSSIP_HEADS": GOSSIP_HEADS,
    "GOSSIP_BUCKET": GOSSIP_BUCKET,
    "GUMBEL_NOISE": GUMBEL_NOISE,
    "TEXT_OUTPUT": TEXT_OUTPUT,
    "IMAGE_OUTPUT": IMAGE_OUTPUT,
    "MODEL_MANIFEST": MODEL_MANIFEST,
    "TRAINING_JOB": TRAINING_JOB,
    "TRAIN_SPLIT": TRAIN_SPLIT,
    "TRAIN_SELECT": TRAIN_SELECT,
    "TRAIN_SPSA_Z": TRAIN_SPSA_Z,
    "TENSORS": TENSORS,
    "TRAIN_INNER_STATE": TRAIN_INNER_STATE,
    "TRAIN_CHECKPOINT": TRAIN_CHECKPOINT,
    "TRAIN_CHALLENGE": TRAIN_CHALLENGE,
    "TRAIN_UPDATES": TRAIN_UPDATES,
    "TRAIN_ROUND": TRAIN_ROUND,
    "TRAIN_CHECK_COIN": TRAIN_CHECK_COIN,
    "TRAIN_STEP": TRAIN_STEP,
    "TRAJECTORY_LEAF": TRAJECTORY_LEAF,
    "TRAJECTORY_CHALLENGE": TRAJECTORY_CHALLENGE,
    "VERIFY_AUDIT": VERIFY_AUDIT,
}
