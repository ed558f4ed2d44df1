"""EMV contactless over APDUs: BER-TLV (``tlv``), DOLs (``dol``), the card read
(``read``) and the AID -> brand table (``brands``). Nothing here does I/O: the
read runs over an ``exchange(apdu) -> response`` callable the caller provides.
"""
