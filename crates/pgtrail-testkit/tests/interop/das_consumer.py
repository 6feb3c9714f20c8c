"""A Database Activity Streams consumer written the way AWS's sample consumers are.

It uses the official AWS Encryption SDK for Python: a raw AES master key provider with
provider id "BC" and key name "DataKey" holding the record's plaintext data key, a client
with CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT, then gunzip of the plaintext. pgtrail
only supplies the plaintext data key (from `pgtrail keys unwrap`), where Aurora consumers
call kms.decrypt.

Input (stdin): lines "<data key hex> <DAS record JSON>". Output (stdout): every event of
every record, one JSON object per line, in order.
"""
import base64
import json
import sys
import zlib

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider


class DasKeyProvider(RawMasterKeyProvider):
    provider_id = "BC"

    def __new__(cls, *args, **kwargs):
        return super(RawMasterKeyProvider, cls).__new__(cls)

    def __init__(self, plain_key):
        RawMasterKeyProvider.__init__(self)
        self.wrapping_key = WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=plain_key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )

    def _get_raw_key(self, key_id):
        return self.wrapping_key


def main():
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT
    )
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        key_hex, record_json = line.split(" ", 1)
        record = json.loads(record_json)
        assert record["type"] == "DatabaseActivityMonitoringRecords", record["type"]
        payload = base64.b64decode(record["databaseActivityEvents"])
        provider = DasKeyProvider(bytes.fromhex(key_hex))
        provider.add_master_key("DataKey")
        plaintext, header = client.decrypt(source=payload, key_provider=provider)
        inner = json.loads(zlib.decompress(plaintext, zlib.MAX_WBITS + 16))
        assert inner["type"] == "DatabaseActivityMonitoringRecord", inner["type"]
        sys.stderr.write("suite 0x%04x\n" % header.algorithm.algorithm_id)
        for event in inner["databaseActivityEventList"]:
            sys.stdout.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    main()
