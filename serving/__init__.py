"""The endpoint container: SageMaker's inference handlers (inference), the local endpoint that speaks the same
contract (server), and the wire contract itself (contract: media types and limits). Stands on classifier/."""
