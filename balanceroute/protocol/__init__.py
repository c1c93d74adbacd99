"""What the load generator and the serving side agree on, so that neither has to import the other.

The benchmark client (:mod:`balanceroute.bench`) and the servers it drives (:mod:`balanceroute.proxy`,
:mod:`balanceroute.emulate`, the vLLM plugin) meet only on the wire, and the simulator meets them in its results:

- :mod:`.headers`: the HTTP headers a routing front end answers with and a client sends;
- :mod:`.prompt_key`: the one integer key of a prompt (:func:`~.prompt_key.prompt_hash`), equal wherever the same
  prompt is seen, which exact-match length predictors learn by;
- :mod:`.tokenizer`: text tokenizers, for exact prompt token counts on either side;
- :mod:`.synthetic`: synthetic text of a given token length, the words of which the emulator counts one token each.
"""
