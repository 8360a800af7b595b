"""Operations: the blocks (:mod:`.settings`), the local stack (:mod:`.local`), the automations (:mod:`.automations`)."""
