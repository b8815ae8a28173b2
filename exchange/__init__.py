"""exchange: exchange servers (consensus replica + order books) serving traders over gRPC.

`BUILD` is "pure" or "compiled": whether the apply path's hot modules (exchange.dedup,
exchange.state_machine) run mypyc-compiled, which they do exactly when the engine does
(orderbook.build Rule 4).
"""

import orderbook as _orderbook
from orderbook.build import activate_exchange as _activate

BUILD = _activate(__path__, _orderbook.BUILD)  # before exchange.dedup or .state_machine loads
